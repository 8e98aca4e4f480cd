from app.ui import summary_table


def test_summary_of_a_model(tiny_dir):
    table, status = summary_table(str(tiny_dir))
    assert list(table.tower) == ["vision", "text"] and table.loc[0, "heads per layer"] == "4"
    assert "M parameters" in status


def test_bad_spec_is_a_message_not_a_traceback():
    table, status = summary_table("ViT-B-99:nope")
    assert table.empty and status.startswith("**Could not load the model:**") and "unknown model" in status


def test_served_page_answers_a_client(tiny_dir):
    from gradio_client import Client

    from app.ui import build

    demo = build()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        assert demo.local_url.startswith("http://127.0.0.1:")
        client = Client(demo.local_url, verbose=False)
        table, status = client.predict(str(tiny_dir), api_name="/summary_table")
        assert "M parameters" in status and table["data"][0][0] == "vision"
    finally:
        demo.close()
