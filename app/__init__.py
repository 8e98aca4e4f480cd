"""MoPE-CLIP Explorer's Gradio app: a thin shell over the `mope` library."""
