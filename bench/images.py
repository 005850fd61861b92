"""`seminar bench images`: the DALI image pipeline against its PIL baseline, and SEMINAR with and
without the image modality on SYNTHETIC data where only the images show some items' topics.

1. Throughput: the same SYNTHETIC JPEGs preprocessed (decode, resize, centre crop, normalise)
   by the DALI pipeline `seminar data prepare` uses and by PIL + numpy, timed round-robin
   (bench/harness.py), with the largest and mean pixel difference between the two.
2. Ablation: one SYNTHETIC dataset whose images show each item's planted topic while the text
   and attributes of an `untitled` share of the items do not (seminar.data.synthetic), embedded
   by DALI + the CNN image tower; SEMINAR (quick settings) trained with and without its image
   modality for each seed; test-split metrics, mean ± std over seeds; and how well the planted
   topics can be read back from the image embeddings (nearest centroid on held-out items).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seminar.bench.harness import (
    Estimate,
    Header,
    Record,
    comparison,
    markdown_table,
    ratio,
    time_interleaved,
    within_noise,
    write_plotted,
)
from seminar.errors import UsageError
from seminar.training.config import QUICK_MODEL, QUICK_TRAIN, TrainConfig

METRICS = ("ndcg@10", "hit@10", "auc")
KEY_METRIC = METRICS[0]
WITH, WITHOUT = "seminar (with images)", "seminar (no images)"


@dataclass(frozen=True)
class ImagesBenchConfig:
    """One images bench; defaults here only (a few minutes on 2 cores)."""

    images: int = 1000  # JPEGs timed through both pipelines
    repeats: int = 3
    batch_size: int = 64
    seeds: int = 3
    users: int = 300
    events_per_user: int = 150
    items: int = 1000
    topics: int = 8
    untitled: float = 0.5  # share of items whose text and attributes hide their topic
    image_topics: int = 0  # 0: an image shows its item's topic (seminar.data.synthetic)
    threads: int = 0  # torch threads while training, 0 = torch's default
    runs: Path = Path("runs/images")

    def __post_init__(self) -> None:
        for name in ("images", "repeats", "batch_size", "seeds", "users", "items"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.image_topics < 0:
            raise UsageError(f"--image-topics must be >= 0, got {self.image_topics}")
        if not 0.0 <= self.untitled <= 1.0:
            raise UsageError(f"--untitled must be in [0, 1], got {self.untitled}")


def throughput(config: ImagesBenchConfig, folder: Path) -> dict[str, Any]:
    """Images/s of DALI and PIL on the same SYNTHETIC JPEGs, and their pixel difference."""
    from seminar.data.dali import PIXEL_TOLERANCE, dali_preprocess, gpu_present
    from seminar.data.images import (
        PreprocessConfig,
        RenderConfig,
        pil_preprocess,
        write_synthetic_images,
    )

    ids = np.arange(1, config.images + 1)
    topics = ids % 20
    names = write_synthetic_images(folder, ids, topics, 0, RenderConfig())
    paths = [folder / name for name in names]
    preprocess = PreprocessConfig()
    dali_name = f"DALI ({'GPU' if gpu_present() else 'CPU'})"
    timings, last = time_interleaved(
        {
            dali_name: lambda: dali_preprocess(paths, preprocess, batch_size=config.batch_size),
            "PIL + numpy": lambda: pil_preprocess(paths, preprocess),
        },
        repeats=config.repeats,
        warmup=1,
    )
    levels = np.abs(last[dali_name] - last["PIL + numpy"]) * np.array(preprocess.std)[:, None, None]
    return {
        "images": config.images,
        "preprocess": asdict(preprocess),
        "rows": {
            name: {
                "seconds": Estimate.of([ms / 1e3 for ms in timing.ms]).to_dict(),
                "images_per_s": Estimate.of(
                    [config.images * 1e3 / ms for ms in timing.ms]
                ).to_dict(),
            }
            for name, timing in timings.items()
        },
        "dali": dali_name,
        "difference": {"max": float(levels.max()), "mean": float(levels.mean())},
        "tolerance": dict(PIXEL_TOLERANCE),
    }


def ablation(config: ImagesBenchConfig, echo: Any) -> dict[str, Any]:
    """Prepare the SYNTHETIC dataset, probe its image embeddings, train with and without."""
    from seminar.data.dataset import PreparedDataset
    from seminar.data.prepare import PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, nearest_centroid_accuracy, prepare_synthetic
    from seminar.training.trainer import train_run

    data = config.runs / "data"
    synthetic = SyntheticConfig(
        users=config.users,
        events_per_user=config.events_per_user,
        items=config.items,
        topics=config.topics,
        images=True,
        image_topics=config.image_topics,
        untitled=config.untitled,
    )
    echo(f"preparing {data} (SYNTHETIC, images, {config.untitled:.0%} untitled items)")
    prepare_synthetic(synthetic, data, PrepareConfig(progress=False))
    ds = PreparedDataset.load(data)
    planted = np.load(data / "planted" / "image_topic.npy")[2:]
    probe = nearest_centroid_accuracy(np.asarray(ds.item_image_emb)[2:], planted)
    results: dict[str, dict[str, list[float]]] = {WITH: {}, WITHOUT: {}}
    for seed in range(config.seeds):
        for name, model in ((WITH, {}), (WITHOUT, {"use_image": False})):
            echo(f"training {name}, seed {seed}")
            train = TrainConfig(**QUICK_TRAIN, seed=seed, threads=config.threads, progress=False)
            out = config.runs / ("with" if name == WITH else "without") / f"seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            summary = train_run(data, out, "seminar", train, {**QUICK_MODEL, **model})
            for metric in METRICS:
                results[name].setdefault(metric, []).append(summary["test"][metric])
    return {
        "data": str(data),
        "synthetic": asdict(synthetic),
        "probe_accuracy": probe,
        "chance": 1.0 / (config.image_topics or config.topics),
        "train": {**QUICK_TRAIN},
        "model": {**QUICK_MODEL},
        "results": {
            name: {metric: Estimate.of(values).to_dict() for metric, values in row.items()}
            for name, row in results.items()
        },
    }


def findings(data: dict[str, Any]) -> list[str]:
    """The sentences the numbers support."""
    speed = data["throughput"]
    dali, pil = speed["dali"], "PIL + numpy"
    dali_rate = Estimate(**speed["rows"][dali]["images_per_s"])
    pil_rate = Estimate(**speed["rows"][pil]["images_per_s"])
    diff, bound = speed["difference"], speed["tolerance"]
    holds = diff["max"] <= bound["max"] and diff["mean"] <= bound["mean"]
    lines = [
        "- "
        + comparison(
            dali,
            dali_rate,
            pil,
            pil_rate,
            lower_is_better=False,
            better="faster",
            unit=" images/s",
            digits=0,
        )
        + ".",
        f"- DALI and PIL outputs differ by at most {diff['max']:.2f} intensity levels of 255 "
        f"({diff['mean']:.3f} on average): {'within' if holds else 'OUTSIDE'} the stated "
        f"tolerance (max {bound['max']:g}, mean {bound['mean']:g}).",
    ]
    ablation_data = data["ablation"]
    probe, chance = ablation_data["probe_accuracy"], ablation_data["chance"]
    lines.append(
        f"- The planted topics the images show are read back from the image embeddings with "
        f"{probe:.1%} nearest-centroid accuracy on held-out items ({ratio(probe, chance)} the "
        f"{chance:.0%} of chance)."
    )
    results = ablation_data["results"]
    first, second = Estimate(**results[WITH][KEY_METRIC]), Estimate(**results[WITHOUT][KEY_METRIC])
    lines.append(
        "- "
        + comparison(WITH, first, WITHOUT, second, lower_is_better=False, better="higher", digits=4)
        + f" on test {KEY_METRIC}."
    )
    beats = first.mean > second.mean and not within_noise(first, second) and first.n > 1
    gap = first.mean - second.mean
    lines.append(
        f"- SEMINAR with images {'beats' if beats else 'does NOT beat'} SEMINAR without them by "
        f"more than seed noise: a {KEY_METRIC} gap of {gap:+.4f} against stds of "
        f"{first.std:.4f} and {second.std:.4f} over {first.n} seeds."
    )
    return lines


def markdown(data: dict[str, Any]) -> str:
    speed = data["throughput"]
    rows = [
        (
            name,
            Estimate(**row["images_per_s"]).text(0),
            Estimate(**row["seconds"]).text(3),
        )
        for name, row in speed["rows"].items()
    ]
    results = data["ablation"]["results"]
    ablation_rows = [
        (name, *(Estimate(**results[name][metric]).text(4) for metric in METRICS))
        for name in (WITH, WITHOUT)
    ]
    return "\n".join(
        [
            f"## Preprocessing {speed['images']:,} SYNTHETIC JPEGs (64×64 → 32×32 crop)",
            "",
            markdown_table(("pipeline", "images/s", "seconds per pass"), rows),
            "",
            "## SEMINAR with and without images (SYNTHETIC, test split)",
            "",
            markdown_table(("variant", *METRICS), ablation_rows),
            "",
            *findings(data),
        ]
    )


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4))
    speed = data["throughput"]["rows"]
    names = list(speed)
    left.bar(
        names,
        [speed[n]["images_per_s"]["mean"] for n in names],
        yerr=[speed[n]["images_per_s"]["std"] for n in names],
        color=["tab:green", "tab:grey"],
    )
    left.set_ylabel("images/s")
    left.set_title("preprocessing throughput")
    results = data["ablation"]["results"]
    variants = list(results)
    right.bar(
        variants,
        [results[v][KEY_METRIC]["mean"] for v in variants],
        yerr=[results[v][KEY_METRIC]["std"] for v in variants],
        color=["tab:blue", "tab:grey"],
    )
    right.set_ylabel(f"test {KEY_METRIC} (mean ± std over seeds)")
    right.set_title("SYNTHETIC: topics only images show")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _image_sentence(synthetic: dict[str, Any]) -> str:
    """What the ablation data's images show that nothing else does."""
    parts = []
    if synthetic["image_topics"]:
        parts.append(
            f"{synthetic['image_topics']} planted image topics independent of the topics (users "
            f"put {synthetic['image_preference']:.0%} of their events on their preferred one)"
        )
    else:
        parts.append("each image shows its item's planted topic")
    if synthetic["untitled"]:
        parts.append(
            f"{synthetic['untitled']:.0%} of the items untitled (filler text, category and brand "
            "of a random topic: only the image shows their topic)"
        )
    return "; ".join(parts)


def run_bench(config: ImagesBenchConfig, out: Path, echo: Any = print) -> Record:
    """Both parts; writes OUT/images.md, images.json and images.png."""
    header = Header.now(seeds=range(config.seeds))
    folder = Path(tempfile.mkdtemp(prefix="seminar-bench-images-"))
    try:
        echo(f"timing DALI and PIL on {config.images:,} SYNTHETIC JPEGs")
        speed = throughput(config, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    data = {"throughput": speed, "ablation": ablation(config, echo)}
    synthetic = data["ablation"]["synthetic"]
    record = Record(
        title="Images: DALI vs PIL preprocessing, SEMINAR with vs without images (SYNTHETIC data)",
        header=header,
        setup=(
            f"throughput: {config.images:,} rendered 64×64 JPEGs, decode → resize (shorter side "
            f"{speed['preprocess']['resize']}, linear, antialiased) → centre crop "
            f"{speed['preprocess']['crop']} → normalise; DALI batch {config.batch_size}, one "
            f"thread, pipeline built in each pass; {config.repeats} timed passes after one warm-up, "
            "round-robin",
            f"ablation data: SYNTHETIC, {synthetic['users']} users × ~{synthetic['events_per_user']} "
            f"events, {synthetic['items']:,} items, {synthetic['topics']} topics, "
            f"{_image_sentence(synthetic)}; images embedded by DALI + the CNN image tower",
            f"training: SEMINAR quick settings {QUICK_TRAIN} {QUICK_MODEL}, torch threads "
            f"{config.threads or 'default'}, seeds 0..{config.seeds - 1}; cells are mean ± std "
            "over seeds",
        ),
        body=markdown(data),
        data=data,
    )
    write_plotted(record, out / "images", plot)
    return record
