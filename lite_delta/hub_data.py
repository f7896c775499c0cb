"""One split of a dataset through ``datasets.load_dataset``: a Hub id (``ORG/NAME``) or a local folder laid out
like a Hub dataset repo (``data/train-*.parquet``, a README.md whose ``configs:`` name the configs). Prompts and
pairs both read Hub datasets here, so a mistake reads the same for both, and so does what is recorded."""

from __future__ import annotations

import re
from pathlib import Path

from lite_delta.errors import LiteDeltaError

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def load_split(source: str, config: str | None, split: str, what: str):
    """The ``split`` of dataset ``source`` (config ``config``, or its default) as a ``datasets.Dataset``.
    ``what`` names the dataset in errors (e.g. "prompts dataset", "pairs dataset")."""
    import datasets
    from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

    named = f"{what} {source}" + (f" (config {config})" if config else "")
    try:
        return datasets.load_dataset(source, config, split=split)
    except DatasetNotFoundError:
        raise LiteDeltaError(
            f"Hub dataset {source} was not found, or is not in the local cache while offline: check the id; "
            f"for a gated dataset accept its terms on https://huggingface.co/datasets/{source} and run `hf auth login`"
        ) from None
    except ConnectionError:
        raise LiteDeltaError(
            f"Hub dataset {source} is not in the local cache and the Hub cannot be reached: connect once, "
            f"or `hf download {source} --repo-type dataset`, or pass a local file"
        ) from None
    except FileNotFoundError as exc:  # datasets' EmptyDatasetError: a folder with no data files
        raise LiteDeltaError(f"{named} holds no data files that `datasets` reads ({exc})") from None
    except DatasetGenerationError as exc:
        raise LiteDeltaError(f"{named} could not be read: {exc.__cause__ or exc}") from None
    except ValueError as exc:  # an unknown or missing config, or split: datasets lists the ones there are
        text = str(exc)
        if "BuilderConfig" in text:
            raise LiteDeltaError(f"{what} {source} has no config {config!r}: {text}") from None
        if "config" in text.lower():
            raise LiteDeltaError(f"{named}: {text}") from None
        if "split" in text.lower():
            raise LiteDeltaError(f"{named} has no split '{split}': {text}") from None
        raise


def provenance(source: str, config: str | None, split: str, table) -> dict:
    """What identifies the rows read: the id, config and split, datasets' fingerprint of the table and, for a
    Hub dataset, the commit it was read at (datasets names its cache folder after that commit)."""
    revision = None
    for cache_file in getattr(table, "cache_files", None) or []:
        folder = Path(cache_file.get("filename", "")).parent.name
        if _COMMIT.match(folder):
            revision = folder
            break
    return {"dataset": source, "config": config, "split": split, "rows": table.num_rows,
            "fingerprint": getattr(table, "_fingerprint", None), "revision": revision}
