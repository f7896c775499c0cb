"""Local folders laid out as a Hub dataset repo, which ``datasets.load_dataset(FOLDER, CONFIG, split=SPLIT)``
reads as it reads ``load_dataset("ORG/NAME", ...)`` (the Hub is out of reach in tests)."""

from __future__ import annotations

from pathlib import Path


def write_hub_dataset(folder: Path, configs: dict[str, dict[str, list[dict]]]) -> Path:
    """``configs``: config name -> split -> rows. Parquet shards as the Hub's uploader writes them
    (``CONFIG/SPLIT-00000-of-00001.parquet``, ``data/`` for ``default``) and a README.md whose ``configs:``
    YAML names them, so ``load_dataset`` sees the same configs and splits as on the Hub."""
    import datasets

    card = ["---", "configs:"]
    for config, splits in configs.items():
        shard_dir = "data" if config == "default" else config
        (folder / shard_dir).mkdir(parents=True, exist_ok=True)
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            datasets.Dataset.from_list(rows).to_parquet(str(folder / shard_dir / f"{split}-00000-of-00001.parquet"))
            card += [f"  - split: {split}", f"    path: {shard_dir}/{split}-*"]
    (folder / "README.md").write_text("\n".join(card + ["---", "", "# a test dataset", ""]), encoding="utf-8")
    return folder
