"""Zero-shot evaluation with CLIP_benchmark metric names."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .clip import Clip
from .data.tasks import Task, image_batches
from .errors import MopeError
from .rules import arguments

RECALL_KS = (1, 5, 10)


@torch.inference_mode()
def image_embeddings(clip: Clip, task: Task, batch_size: int = 64) -> torch.Tensor:
    """L2-normalized image embeddings of the task's images, (N, D) float32 on the CPU."""
    out = [clip.model.encode_image(x.to(clip.device), normalize=True).float().cpu()
           for x in image_batches(task, clip.preprocess, batch_size)]
    return torch.cat(out)


@torch.inference_mode()
def text_embeddings(clip: Clip, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalized text embeddings, (T, D) float32 on the CPU."""
    out = [clip.model.encode_text(clip.tokenizer(list(texts[i:i + batch_size])).to(clip.device), normalize=True).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def classifier(clip: Clip, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Template ensembling: mean of normalized prompt embeddings per class, renormalized. (C, D)."""
    return ensemble(text_embeddings(clip, prompts(classnames, templates)), len(classnames))


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template for every class, class-major (the order ensemble() expects)."""
    return [t.format(c) for c in classnames for t in templates]


def task_texts(task: Task) -> list[str]:
    """What the text tower reads for a task: the class prompts (zero-shot) or the captions (retrieval)."""
    return prompts(task.classnames, task.templates) if task.protocol == "zeroshot" else task.texts


def ensemble(prompt_emb: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C·T, D) normalized prompt embeddings, class-major → (C, D) renormalized class means."""
    emb = prompt_emb.view(n_classes, -1, prompt_emb.shape[-1]).mean(1)
    return emb / emb.norm(dim=-1, keepdim=True)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 (top-min(5, C)) and mean per-class recall over the classes present in labels."""
    hit1, hit5 = classification_hits(logits, labels)
    return {"acc1": hit1.float().mean().item(), "acc5": hit5.float().mean().item(),
            "mean_per_class_recall": per_class_recall(hit1.float(), labels)}


def classification_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: is the label the top-1, is it in the top-min(5, C) (bool tensors). Row by row."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return top[:, 0].eq(labels), top.eq(labels.unsqueeze(1)).any(1)


def per_class_recall(hit1: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in labels of the fraction of their images that are hits (hit1: 0/1 floats)."""
    return torch.stack([hit1[labels == c].mean() for c in labels.unique()]).mean().item()


def retrieval_metrics(similarity: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@k both ways from an (images, texts) similarity; a query hits when any positive is in its top k."""
    return {name: hit.float().mean().item() for name, hit in retrieval_hits(similarity, text_to_image, ks).items()}


def retrieval_hits(similarity: torch.Tensor, text_to_image: torch.Tensor,
                   ks: Sequence[int] = RECALL_KS) -> dict[str, torch.Tensor]:
    """Per query, for each recall metric: is a positive in its top k (text queries for image_retrieval_*,
    image queries for text_retrieval_*)."""
    n_images, n_texts = similarity.shape
    positive = torch.zeros(n_images, n_texts, dtype=torch.bool)
    positive[text_to_image, torch.arange(n_texts)] = True
    out = {}
    for k in ks:
        top_images = similarity.T.topk(min(k, n_images), dim=1).indices          # text query → images
        out[f"image_retrieval_recall@{k}"] = positive.T.gather(1, top_images).any(1)
        top_texts = similarity.topk(min(k, n_texts), dim=1).indices              # image query → texts
        out[f"text_retrieval_recall@{k}"] = positive.gather(1, top_texts).any(1)
    return out


def task_metrics(task: Task, image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
    """Metrics from embeddings: text_emb is the class classifier (zeroshot) or the captions (retrieval)."""
    sim = image_emb @ text_emb.T
    if task.protocol == "zeroshot":
        return classification_metrics(sim, task.labels)
    return retrieval_metrics(sim, task.text_to_image)


def metric_names(protocol: str) -> list[str]:
    """Metrics a task of this protocol (zeroshot or retrieval) can be scored by: its own, plus 'loss' (continuous)
    and, for retrieval, 'recall_mean'."""
    if protocol == "zeroshot":
        return ["acc1", "acc5", "mean_per_class_recall", "loss"]
    return [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in RECALL_KS] + ["recall_mean", "loss"]


def default_metric(task: Task) -> str:
    """The paper's choices: top-1 accuracy for classification, mean retrieval recall for retrieval."""
    return "acc1" if task.protocol == "zeroshot" else "recall_mean"


def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def check_metric(task: Task, metric: str) -> None:
    if metric not in metric_names(task.protocol):
        raise MopeError(f"a {task.protocol} task has no metric '{metric}'; use one of {', '.join(metric_names(task.protocol))}")


def metric_value(metric: str, task: Task, image_emb: torch.Tensor, text_emb: torch.Tensor,
                 logit_scale: float) -> float:
    """One metric from normalized embeddings (text_emb: the class classifier or the captions)."""
    if metric == "loss":
        return contrastive_loss(task, image_emb, text_emb, logit_scale).item()
    values = task_metrics(task, image_emb, text_emb)
    if metric == "recall_mean":
        return sum(values.values()) / len(values)
    return values[metric]


def zeroshot_stats(metric: str, image_emb: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor,
                   logit_scale: float) -> torch.Tensor:
    """Per image, what a zero-shot metric averages: 1/0 hits (acc1, acc5, mean_per_class_recall) or the
    cross-entropy (loss). Computed row by row, so images can be processed in any grouping."""
    if metric == "loss":
        return F.cross_entropy(logit_scale * image_emb @ classifier.T, labels, reduction="none")
    hit1, hit5 = classification_hits(image_emb @ classifier.T, labels)
    return (hit5 if metric == "acc5" else hit1).float()


def zeroshot_value(metric: str, stats: torch.Tensor, labels: torch.Tensor) -> float:
    """The metric from per-image stats (zeroshot_stats of every image, task order): bit-identical to
    metric_value on the whole set's embeddings."""
    if metric == "loss":  # nll_loss's own mean, the reduction F.cross_entropy applies to the whole set
        return F.nll_loss(-stats.view(-1, 1), torch.zeros(len(stats), dtype=torch.long)).item()
    if metric == "mean_per_class_recall":
        return per_class_recall(stats, labels)
    return stats.mean().item()


def zeroshot_contributions(metric: str, stats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, its share of the metric: their mean is the metric (per-class recall weighs each image by
    1 / (classes present × images of its class))."""
    if metric != "mean_per_class_recall":
        return stats
    classes, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    return stats * len(labels) / (len(classes) * counts[inverse])


def retrieval_contributions(metric: str, task: Task, image_emb: torch.Tensor, text_emb: torch.Tensor,
                            logit_scale: float) -> torch.Tensor:
    """Per image, its share of a retrieval metric (its own query, plus its captions' queries scaled by
    images / captions): their mean is the metric."""
    owner = task.text_to_image
    n_images, n_texts = len(image_emb), len(text_emb)

    def by_owner(per_text: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_images).index_add_(0, owner, per_text.float()) * (n_images / n_texts)

    if metric == "loss":
        logits = logit_scale * image_emb @ text_emb.T
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[owner, torch.arange(n_texts)] = True
        image_to_text = -torch.logsumexp(logits.log_softmax(dim=1).masked_fill(~positive, float("-inf")), dim=1)
        return (image_to_text + by_owner(F.cross_entropy(logits.T, owner, reduction="none"))) / 2
    hits = retrieval_hits(image_emb @ text_emb.T, owner)
    names = list(hits) if metric == "recall_mean" else [metric]
    shares = [hits[m].float() if m.startswith("text_") else by_owner(hits[m]) for m in names]
    return torch.stack(shares).mean(0)


def contrastive_loss(task: Task, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """Zero-shot cross-entropy (classification) or the symmetric contrastive loss with several
    positives per image (retrieval): a continuous metric that still ranks where accuracy ties."""
    logits = logit_scale * image_emb @ text_emb.T
    if task.protocol == "zeroshot":
        return F.cross_entropy(logits, task.labels.to(logits.device))
    owner = task.text_to_image.to(logits.device)
    text_to_image = F.cross_entropy(logits.T, owner)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[owner, torch.arange(len(owner), device=logits.device)] = True
    log_p = logits.log_softmax(dim=1)
    image_to_text = -torch.logsumexp(log_p.masked_fill(~positive, float("-inf")), dim=1).mean()
    return (text_to_image + image_to_text) / 2


def task_text_embeddings(clip: Clip, task: Task) -> torch.Tensor:
    if task.protocol == "zeroshot":
        return classifier(clip, task.classnames, task.templates)
    return text_embeddings(clip, task.texts)


def evaluate(clip: Clip, task: Task, batch_size: int = 64) -> dict[str, float]:
    """CLIP_benchmark-named metrics of `clip` on `task`."""
    arguments("mope.evaluate", batch_size=batch_size)
    if len(task) == 0:
        raise MopeError(f"task {task.name} has no images")
    return task_metrics(task, image_embeddings(clip, task, batch_size), task_text_embeddings(clip, task))


def top1_predictions(clip: Clip, task: Task, batch_size: int = 64) -> torch.Tensor:
    """The class each of the task's images is assigned (zero-shot top-1), (N,) on the CPU."""
    if task.protocol != "zeroshot":
        raise MopeError(f"task {task.name} is a {task.protocol} task: per-class accuracy needs a classification task")
    return (image_embeddings(clip, task, batch_size) @ task_text_embeddings(clip, task).T).argmax(dim=1)


def per_class_accuracy(clips: Mapping[str, Clip], task: Task, batch_size: int = 64) -> pd.DataFrame:
    """Top-1 accuracy per class of several models side by side, the first model the reference.

    One row per class present in the task: class, images, one column per model, and `change` (the
    largest drop from the reference among the other models, negative = lost); classes that lost most
    come first (then by class name).
    """
    if not clips:
        raise MopeError("choose at least one model")
    labels = task.labels
    hits = {name: top1_predictions(clip, task, batch_size).eq(labels) for name, clip in clips.items()}
    present = labels.unique().tolist()
    rows = [{"class": task.classnames[c], "images": int((labels == c).sum()),
             **{name: h[labels == c].float().mean().item() for name, h in hits.items()}} for c in present]
    df = pd.DataFrame(rows)
    names = list(clips)
    df["change"] = df[names[1:]].sub(df[names[0]], axis=0).min(axis=1) if len(names) > 1 else 0.0
    return df.sort_values(["change", "class"], kind="stable").reset_index(drop=True)


@torch.inference_mode()
def label_probabilities(clip: Clip, images: Sequence, classnames: Sequence[str],
                        templates: Sequence[str] = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
                        ) -> torch.Tensor:
    """(N images, C labels) softmax of CLIP's scaled image–label similarities (PIL images, ensembled prompts)."""
    if not classnames:
        raise MopeError("give at least one label to choose from")
    x = torch.stack([clip.preprocess(im) for im in images]).to(clip.device)
    image_emb = clip.model.encode_image(x, normalize=True).float().cpu()
    logits = clip.model.logit_scale.exp().item() * image_emb @ classifier(clip, classnames, templates).T
    return logits.softmax(dim=-1)
