"""Training data as the LLaVA-OneVision data release publishes it: sharded parquet (or arrow) files with the image
bytes in the rows, read with `datasets`, and mixable with LLaVA JSON in the data YAML. This module finds the files
(`resolve_data_files`, `mixture_entries`) and reads their rows as records with random access (map-style: the
Trainer's sampler and `--group_by_modality_length` / `--token_budget` work as on JSON); `streaming.py` reads the same
sources as a stream (`--streaming`). Bad rows are skipped and counted as on JSON (`data.SupervisedDataset`).

**The release's layout.** `lmms-lab/LLaVA-OneVision-Data` on the Hugging Face Hub holds one folder per subset (each a
`datasets` config; the viewer lists 80-odd), e.g. `CLEVR-Math(MathV360K)/train-00000-of-00002.parquet`,
`aokvqa(cauldron,llava_format)/train-00000-of-00014.parquet` (the Hub's parquet converter also serves them as
`<subset>/train/0000.parquet` on `refs/convert/parquet`). A row has `id` (string), `image` (a `datasets` Image: in
parquet a struct `{bytes: binary, path: string}`, null for a text-only row), `conversations` (a list of LLaVA's
`{from, value}` turns) and `data_source` (string), the features the LLaVA-NeXT-Data card declares for the same
family of releases. The cards' "Code Guidance" converts the rows to LLaVA JSON + an image folder (the scripts that
follow it save each image as `{id}.jpg`), because LLaVA-NeXT trains from JSON and image folders: its data YAML lists
`json_path` + `sampling_strategy` entries. Here the shards are read as published: no conversion, no image folder.
Sources:
- https://huggingface.co/datasets/lmms-lab/LLaVA-OneVision-Data (file tree per subset, e.g. `tree/main/CLEVR-Math(
  MathV360K)`: `train-00000-of-00002.parquet`, `train-00001-of-00002.parquet`; the viewer's subset list)
- https://huggingface.co/datasets/lmms-lab/LLaVA-NeXT-Data/raw/main/README.md (`dataset_info.features`: id,
  conversations [from, value], data_source, image)
- https://huggingface.co/datasets/lmms-lab/LLaVA-OneVision-Mid-Data/commit/cb2ab99420710ef84d61721766ce3045336849bf
  (the cards' "Code Guidance": "During LLaVA-OneVision training, we use the `json` and `image/video` folder to store
  the data")
- https://github.com/LLaVA-VL/LLaVA-NeXT/blob/main/scripts/train/README.md ("About the LLaVA-OneVision Data": the
  YAML mixtures, `json_path` / `sampling_strategy`; rows carry `data_source`)
- `datasets` 5.2: `load_dataset("parquet", data_files=..., streaming=True)`, `IterableDataset.reshard()` (parquet: one
  shard per row group), `.shard()`, `.iter()`; `Dataset.from_file` for arrow files.

**Sources accepted** (`--data_path`, or a YAML entry's `data_files`): a `.parquet` / `.arrow` file, a folder (all
`.parquet` / `.arrow` files under it, sorted by path), a glob (`**` recursive), or a list of these; paths in a YAML
resolve against the YAML's folder. One format per entry; every file of an entry must have the same columns (one
entry per subset of the release, as LLaVA-NeXT's YAML has one `json_path` per dataset). A row becomes a record of
`data.SupervisedDataset`'s shape: its columns as they are (`id`, `conversations`, `data_source`, ...), `image` the
cell `{"bytes", "path"}` (decoded from the bytes by `images.open_image`, in memory; a cell with a path and no bytes,
or a string column, names a file under `--image_folder`), or a list of cells, or left out when null; a row without
`id` gets `<source>:<row>`.

**YAML mixtures** (`load_records`, `stream_sources`): each entry has `json_path` (LLaVA JSON / JSONL, as LLaVA-NeXT) or
`data_files` (shards, as above), and `sampling_strategy` for both: `all`, `first:N%`, `end:N%`, `random:N%` or a count
(`data.strategy_indices`; for shards the row counts come from the parquet footers / arrow files, so the same rows are
kept as the map-style path keeps; `random:` seeded by `--data_seed`, else `--seed`)::

    datasets:
      - json_path: llava_instruct.json
        sampling_strategy: all
      - data_files: LLaVA-OneVision-Data/CLEVR-Math(MathV360K)     # folder, file, glob or list
        sampling_strategy: random:50%

**Map-style** (`shard_records`): `datasets.load_dataset("parquet", data_files=...)` converts the shards once into
`datasets`' Arrow cache (`HF_DATASETS_CACHE`; a copy the size of the data, made by the first run and reused), arrow
files are memory-mapped as they are (`Dataset.from_file`). Records are read on access, zero-copy (the image bytes are
a memoryview of the mapped table until decoded), so a mixture of millions of rows costs no memory; the length
estimate of `--group_by_modality_length` / `--token_budget` reads the conversations and image counts by column
(`ShardRecords.without_image_bytes`), not the images.
"""

from __future__ import annotations

import glob
import logging
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".parquet", ".arrow")
GLOB_CHARS = "*?["


class CorruptDataError(ValueError):
    """A data file that cannot be read: its parquet footer, a row group, or an arrow file."""


def corruption(files: list[Path]) -> list[str]:
    """What cannot be read in `files`, one line per file or parquet row group (empty when all read): the check
    behind a failed conversion, which names no file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = []
    for f in files:
        try:
            if f.suffix == ".parquet":
                parquet = pq.ParquetFile(f)
                for g in range(parquet.metadata.num_row_groups):
                    try:
                        parquet.read_row_group(g)
                    except (OSError, pa.ArrowException) as error:
                        found.append(f"{f} row group {g}: {one_line(error)}")
            else:
                with pa.memory_map(str(f)) as source:
                    pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowException) as error:
            found.append(f"{f}: {one_line(error)}")
    return found


def one_line(error: BaseException) -> str:
    """pyarrow's messages span lines; in ours, one."""
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------------------------------------------
# Sources: files, YAML entries


def is_shard_source(spec) -> bool:
    """Whether `spec` (a `--data_path` or a YAML `data_files` value) names shards: a list, a `.parquet` / `.arrow`
    file, a folder or a glob."""
    if isinstance(spec, (list, tuple)):
        return True
    text = str(spec)
    path = Path(text)
    return path.suffix in SHARD_SUFFIXES or path.is_dir() or (any(c in text for c in GLOB_CHARS) and not path.exists())


def resolve_data_files(spec, base: str | Path | None = None) -> list[Path]:
    """The shard files `spec` names (see the module doc), relative paths against `base`; sorted within a folder or a
    glob, in the given order across a list. One format (parquet or arrow) for all."""
    files: list[Path] = []
    seen: set[Path] = set()
    for item in spec if isinstance(spec, (list, tuple)) else [spec]:
        path = Path(str(item)).expanduser()
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if path.is_dir():
            found = sorted(
                (p for p in path.rglob("*") if p.suffix in SHARD_SUFFIXES and p.is_file()),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            where = f"folder {path}"
        elif path.exists():
            found, where = [path], str(path)
        elif any(c in str(item) for c in GLOB_CHARS):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).suffix in SHARD_SUFFIXES)
            where = f"glob {path}"
        else:
            raise FileNotFoundError(f"data files not found: {path}")
        if not found:
            raise FileNotFoundError(f"no .parquet or .arrow files in {where}")
        files += [p for p in found if not (p in seen or seen.add(p))]
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise ValueError(f"{spec}: parquet and arrow files mixed in one source; give each format its own entry.")
    return files


@dataclass
class MixtureEntry:
    """One entry of a data YAML: LLaVA JSON (`json_path`) or shards (`data_files`)."""

    kind: str  # "json" or "shards"
    name: str
    strategy: str = "all"
    path: Path | None = None
    files: list[Path] = field(default_factory=list)


def mixture_entries(yaml_path: str | Path) -> list[MixtureEntry]:
    """The entries of a LLaVA-NeXT data YAML, `datasets: [{json_path | data_files, sampling_strategy}]`."""
    import yaml

    yaml_path = Path(yaml_path)
    spec = yaml.safe_load(yaml_path.read_text()) or {}
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not entries:
        raise ValueError(
            f"{yaml_path}: a data mixture needs a non-empty 'datasets:' list of "
            f"{{json_path or data_files, sampling_strategy}}."
        )
    out = []
    for entry in entries:
        keys = [k for k in ("json_path", "data_files") if isinstance(entry, dict) and k in entry]
        if len(keys) != 1:
            raise ValueError(
                f"{yaml_path}: every entry of 'datasets' needs one json_path (LLaVA JSON) or data_files "
                f"(parquet / arrow shards); got {entry}."
            )
        strategy = str(entry.get("sampling_strategy", "all"))
        if keys[0] == "json_path":
            path = Path(entry["json_path"])
            path = path if path.is_absolute() else yaml_path.parent / path
            if path.suffix in SHARD_SUFFIXES or path.is_dir():
                raise ValueError(f"{yaml_path}: json_path {path} names shards; give them as data_files.")
            out.append(MixtureEntry("json", str(path), strategy, path=path))
        else:
            files = resolve_data_files(entry["data_files"], yaml_path.parent)
            out.append(MixtureEntry("shards", str(entry["data_files"]), strategy, files=files))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Rows -> records


def _image_cell(scalar):
    """An arrow image cell as a record's image: `{"bytes": memoryview (zero-copy) or None, "path"}` for a `datasets`
    Image struct, a list of them, a string as it is, None for null."""
    import pyarrow as pa

    if not scalar.is_valid:
        return None
    if isinstance(scalar, pa.StructScalar) and "bytes" in [f.name for f in scalar.type]:
        data = scalar["bytes"]
        path = scalar["path"].as_py() if "path" in [f.name for f in scalar.type] else None
        return {"bytes": memoryview(data.as_buffer()) if data.is_valid else None, "path": path}
    if isinstance(scalar, (pa.ListScalar, pa.LargeListScalar)):
        return [_image_cell(item) for item in scalar.values]
    return scalar.as_py()


def arrow_records(table, first: int, source: str) -> Iterator[dict]:
    """The rows of a pyarrow table as records (see the module doc); `first`: the first row's number in its source,
    for rows without an `id`."""
    columns = {name: table.column(name) for name in table.column_names}
    for k in range(table.num_rows):
        record = {
            name: (_image_cell(column[k]) if name == "image" else column[k].as_py()) for name, column in columns.items()
        }
        if record.get("image") is None:
            record.pop("image", None)
        if record.get("id") is None:
            record["id"] = f"{source}:{first + k}"
        yield record


def open_table(files: list[Path]):
    """The rows of `files` as one map-style `datasets.Dataset`: parquet through `load_dataset` (into the `datasets`
    cache, once), arrow files memory-mapped."""
    import datasets

    try:
        if files[0].suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        return datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    except Exception as error:  # datasets wraps what pyarrow raised, without the file: find it
        found = corruption(files)
        if not found:
            raise
        raise CorruptDataError(
            f"cannot read the data: {'; '.join(found)}. Map-style data is read whole before training starts: "
            f"remove or replace the file, or train with --streaming --skip_corrupt_data true, which skips what "
            f"cannot be read and reports it."
        ) from error


class ShardRecords(Sequence):
    """The rows of shard files as records, read on access from `datasets`' memory-mapped Arrow table (`rows`: the
    table rows in view, in order). `select(indices)` gives a view of some of them (`data.sample_records`)."""

    def __init__(self, table, source: str, rows: Sequence[int] | None = None) -> None:
        self.table, self.source = table, source
        self.rows = range(len(table)) if rows is None else rows
        self._arrow = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrow": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.select(range(len(self.rows))[index])
        row = self.rows[index]
        if self._arrow is None:
            self._arrow = self.table.with_format("arrow")
        return next(arrow_records(self._arrow[row], row, self.source))

    def __iter__(self) -> Iterator[dict]:
        for k in range(len(self.rows)):
            yield self[k]

    def select(self, indices: Sequence[int]) -> ShardRecords:
        if isinstance(indices, range) and isinstance(self.rows, range):
            return ShardRecords(self.table, self.source, self.rows[indices.start : indices.stop : indices.step])
        return ShardRecords(self.table, self.source, [self.rows[i] for i in indices])

    def without_image_bytes(self, block: int = 8192) -> Iterator[dict]:
        """The records' `conversations` and as many `image` entries as images (placeholders), in order, read by
        column without touching the image data: what `lengths.dataset_lengths` estimates lengths from."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.table.with_format("arrow")
        columns = [c for c in ("conversations", "image") if c in self.table.column_names]

        def light(part) -> Iterator[dict]:
            conversations = (
                part.column("conversations").to_pylist() if "conversations" in columns else [None] * len(part)
            )
            if "image" not in columns:
                counts = [0] * len(part)
            elif pa.types.is_list(part.column("image").type) or pa.types.is_large_list(part.column("image").type):
                counts = pc.fill_null(pc.list_value_length(part.column("image")), 0).to_pylist()
            else:
                counts = [int(v) for v in pc.is_valid(part.column("image")).to_pylist()]
            for turns, count in zip(conversations, counts):
                yield {"conversations": turns, "image": ["image"] * count if count > 1 else "image" if count else None}

        rows = self.rows
        for k in range(0, len(rows), block):
            chunk = rows[k : k + block]
            lo, hi = min(chunk), max(chunk) + 1
            if hi - lo == len(chunk) and (isinstance(chunk, range) or list(chunk) == list(range(lo, hi))):
                yield from light(table[lo:hi].select(columns))  # a contiguous block: one zero-copy slice
            else:
                for row in chunk:
                    yield from light(table[row].select(columns))


class MixedRecords(Sequence):
    """Several record sequences (lists, `ShardRecords`) as one, in order."""

    def __init__(self, parts: list[Sequence]) -> None:
        self.parts = [part for part in parts if len(part)]
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.select(range(len(self))[index])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect_right(self.starts, index) - 1
        return self.parts[k][index - self.starts[k]]

    def __iter__(self) -> Iterator[dict]:
        for part in self.parts:
            yield from part

    def select(self, indices: Sequence[int]) -> MixedRecords:
        return MixedRecords([_Picked(self, list(indices))])

    def without_image_bytes(self) -> Iterator[dict]:
        """As `ShardRecords.without_image_bytes`, part by part (JSON records as they are)."""
        for part in self.parts:
            light = getattr(part, "without_image_bytes", None)
            yield from light() if callable(light) else part


class _Picked(Sequence):
    def __init__(self, base: Sequence, indices: list[int]) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return _Picked(self.base, self.indices[index])
        return self.base[self.indices[index]]


def shard_records(files: list[Path], source: str | None = None) -> ShardRecords:
    """Map-style records of shard `files` (see the module doc)."""
    source = source or (str(files[0].parent) if len(files) > 1 else str(files[0]))
    table = open_table(files)
    logger.info("shards: %d rows from %d file(s) of %s", len(table), len(files), source)
    return ShardRecords(table, source)
