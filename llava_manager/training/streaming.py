"""The training data as a stream (`--streaming`): LLaVA JSON, the parquet / arrow shards of the LLaVA-OneVision data
release (`shards.py` describes their layout, the sources accepted and the YAML mixtures) or a mixture of both, read
with `datasets`' streaming readers into an endless IterableDataset. Bad rows are skipped and counted as on JSON
(`data.SupervisedDataset`).

**Streaming** (`StreamingSupervisedDataset`, `--streaming`, requires `--max_steps`): no conversion, no cache; the
shards are read with `datasets`' streaming parquet / arrow readers. The order is a pure function of the data, the
seed, the world size, the per-device batch size and `--dataloader_num_workers`:
- Pieces: one parquet row group (`IterableDataset.reshard()`'s unit) or one arrow file of a shard entry; 256 records
  of a JSON entry. Each pass ("epoch") of the stream permutes the pieces of the whole mixture (seeded by the seed and
  the pass), then deals them round-robin to the `world_size x max(1, num_workers)` readers (rank r's worker w is
  reader `r * workers + w`); each reader reads its pieces' kept rows in file order through a shuffle buffer of
  `--shuffle_buffer` rows (seeded by seed, pass and reader). With fewer pieces than readers, every reader reads every
  piece and keeps every n-th row instead. `--shuffle_buffer 0`: no shuffling at all (pieces in mixture order, rows in
  file order). The buffer holds raw rows (encoded images): about buffer x mean image size of memory per reader.
- So `random:` keeps the same rows as map-style but reads them in file order, and the mixture is mixed by the piece
  permutation and the buffer, not by a global permutation as the map-style sampler does.
- Endless: each reader goes on with the next pass when its pieces are done, so every rank always has data (no rank
  stops early and hangs the others), and `--max_steps` alone decides the length of the run (the Trainer requires it
  for a data set without a length; `--num_train_epochs` is unused).
- Bad rows: a row that cannot be used is skipped with the same reasons and reports as on JSON (`data_skipped` in the
  logs, `data_skipped.json`; the skip's `index` is the row's number in the mixture), the next good row of the stream
  takes its place; `--strict_data` raises. A reader that goes through a whole pass without a usable row raises.
- Corrupt files: a parquet row group (or arrow file) that cannot be read stops the run with a `CorruptDataError`
  naming the file, the row group, its rows in the mixture and the training step. `--skip_corrupt_data true` skips
  what is left of that piece (a row group with `datasets` 5.2; a whole file with 4.6) instead, as one skip record
  (reason "corrupt data", the file and row group as its id, the rows not read in its detail) in the report, each
  pass it is reached; the order stays a function of the data, so a resumed run meets it at the same point. A file
  whose parquet footer cannot be read fails at the start.
- Several processes: each rank's readers read only their own pieces and decode only their own samples. accelerate
  wraps an IterableDataset in `IterableDatasetShard`, which reads world_size x batch consecutive elements and keeps
  the rank's slice; this dataset yields cheap placeholders (None) at the other ranks' positions, so the wrapper keeps
  exactly the rank's own samples. `dispatch_batches` is set to False (with dispatch, rank 0 would read and
  concatenate every rank's batches, which needs equal shapes); `split_batches` must stay off.

**Resume with streaming** (transformers 5.23 / accelerate 1.15). For a data loader without a length the Trainer counts
the whole run as one epoch of `max_steps` steps; resuming at step s it calls `accelerate.skip_first_batches(loader,
s x gradient_accumulation_steps)`, which, for an IterableDataset, iterates the fresh loader and throws the first
batches away (`DataLoaderShard(skip_batches=...)`). The stream is deterministic and endless, so this lands exactly on
the batch an uninterrupted run would have trained next, also across passes (tested: the same per-step losses after a
resume in the second pass; by hand also with DeepSpeed ZeRO-2, world size 2, one loader worker each, on CPU),
provided the data, seed, world size, per-device batch size and `--dataloader_num_workers` are unchanged (another
worker count deals the pieces to other readers: another order). The skipped batches are rebuilt on the way (each
rank its own: images decoded and processed, no forward pass), so resuming after s steps costs about the data-loading
time of s steps. `--ignore_data_skip true` starts the stream from its beginning instead.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from ..processing.processors import images_kwargs
from ..processing.templates import TEMPLATES
from .data import SampleError, SupervisedDataset, check_template, read_records, sample_records, strategy_indices
from .shards import (
    CorruptDataError,
    MixtureEntry,
    arrow_records,
    is_shard_source,
    mixture_entries,
    one_line,
    resolve_data_files,
)

logger = logging.getLogger(__name__)

JSON_PIECE = 256  # records of a JSON entry per streaming piece
READ_BATCH = 64  # rows per arrow table read from a streamed piece


@dataclass(frozen=True)
class Piece:
    """A unit of the stream: shard `shard` of entry `entry` (a parquet row group / an arrow file; for JSON, the
    `shard`-th chunk of JSON_PIECE records); `start`: the mixture number of its first row; `keep`: its rows kept by
    `sampling_strategy` (local numbers): None for all, a range, or a byte a row (1: kept) for a random selection."""

    entry: int
    shard: int
    start: int
    rows: int
    keep: range | bytes | None = None

    def keeps(self, row: int) -> bool:
        return self.keep is None or (row in self.keep if isinstance(self.keep, range) else self.keep[row] == 1)

    def kept(self) -> int:
        return self.rows if self.keep is None else len(self.keep) if isinstance(self.keep, range) else sum(self.keep)


@dataclass
class StreamEntry:
    """One source of a stream: shards (`stream`: a `datasets` IterableDataset whose shards are the pieces) or JSON
    records (`records`, already sampled)."""

    name: str
    strategy: str
    rows: int
    start: int  # the mixture number of its first row
    stream: Any = None
    records: list | None = None
    pieces: list[Piece] = field(default_factory=list)
    locations: list[tuple[Path, int | None]] = field(default_factory=list)  # per shard: its file and row group


def _shard_stream(files: list[Path]) -> tuple[Any, list[int], list[tuple[Path, int | None]]]:
    """The streaming `datasets` IterableDataset of `files`, the row count of each of its shards (parquet row groups,
    `reshard()`; or whole files: arrow, or when the row groups cannot be matched) and each shard's file and row
    group. A file whose footer cannot be read is a `CorruptDataError` here, before training."""
    import datasets
    import pyarrow as pa

    kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
    if kind == "parquet":
        import pyarrow.parquet as pq

        groups, per_file, where = [], [], []
        for f in files:  # the footers first: `datasets` would fail on a bad one without naming it
            try:
                meta = pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowException) as error:
                raise CorruptDataError(
                    f"{f}: not a readable parquet file ({one_line(error)}); remove or replace it (nothing was "
                    f"trained yet)."
                ) from error
            groups += [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            where += [(f, g) for g in range(meta.num_row_groups)]
            per_file.append(meta.num_rows)
    stream = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True)
    if kind == "parquet":
        resharded = stream.reshard()
        if resharded.num_shards == len(groups):
            return resharded, groups, where
    else:
        per_file = [datasets.Dataset.from_file(str(f)).num_rows for f in files]
    if stream.num_shards != len(files):
        raise RuntimeError(f"datasets made {stream.num_shards} shards of {len(files)} files; cannot map rows to files.")
    return stream, per_file, [(f, None) for f in files]


def _pieces(entry: int, counts: list[int], start: int, keep: range | list[int] | None) -> list[Piece]:
    """Pieces of `counts` rows each, the kept rows (`keep`: entry-level numbers) spread over them."""
    out, offset = [], 0
    ordered = None if keep is None or isinstance(keep, range) else sorted(keep)
    for shard, rows in enumerate(counts):
        lo, hi = offset, offset + rows
        if keep is None:
            local = None
        elif isinstance(keep, range):
            local = range(max(lo, keep.start) - lo, max(lo, min(hi, keep.stop)) - lo)
        else:
            flags = bytearray(rows)
            for i in ordered[bisect_left(ordered, lo) : bisect_left(ordered, hi)]:
                flags[i - lo] = 1
            local = bytes(flags)
        piece = Piece(entry, shard, start + lo, rows, local)
        if rows and piece.kept():
            out.append(piece)
        offset = hi
    return out


def stream_sources(data_path: str | Path, seed: int = 0) -> list[StreamEntry]:
    """The entries of a stream from `--data_path` (JSON, shards, or a YAML mixture), with their pieces and the rows
    `sampling_strategy` keeps (the same rows as `data.load_records` keeps)."""
    data_path = Path(data_path)
    if data_path.suffix in (".yaml", ".yml"):
        specs = mixture_entries(data_path)
    elif is_shard_source(data_path):
        specs = [MixtureEntry("shards", str(data_path), files=resolve_data_files(data_path))]
    else:
        specs = [MixtureEntry("json", str(data_path), path=data_path)]
    entries, start = [], 0
    for e, spec in enumerate(specs):
        if spec.kind == "json":
            records = sample_records(read_records(spec.path), spec.strategy, seed)
            counts = [min(JSON_PIECE, len(records) - k) for k in range(0, len(records), JSON_PIECE)]
            entry = StreamEntry(
                spec.name, spec.strategy, len(records), start, records=records, pieces=_pieces(e, counts, start, None)
            )
        else:
            stream, counts, locations = _shard_stream(spec.files)
            total = sum(counts)
            entry = StreamEntry(
                spec.name,
                spec.strategy,
                total,
                start,
                stream=stream,
                pieces=_pieces(e, counts, start, strategy_indices(total, spec.strategy, seed)),
                locations=locations,
            )
        kept = sum(p.kept() for p in entry.pieces)
        logger.info(
            "data stream: %d of %d rows from %s (%s), %d pieces",
            kept,
            entry.rows,
            spec.name,
            spec.strategy,
            len(entry.pieces),
        )
        entries.append(entry)
        start += entry.rows
    return entries


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """`items` through a shuffle buffer of `size` (as `datasets`' `shuffle(buffer_size=...)`); size <= 1: as they
    come."""
    if size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer


class StreamingSupervisedDataset(IterableDataset):
    """`data.SupervisedDataset`'s samples from a stream (see the module doc for the order, several processes and
    resuming): endless, each sample built as `SupervisedDataset.build` builds it, the skipped rows under "skipped"
    of the next sample.

    `entries`: `stream_sources(...)`; `world_size`, `rank`, `batch_size`: the training processes and the per-device
    batch size (placeholders for the other ranks' slices when world_size > 1); `seed`, `shuffle_buffer`: the order;
    `skip_corrupt`: skip an unreadable piece (reported) instead of stopping.
    """

    build = SupervisedDataset.build  # the same checks, tokens, labels and images as the map-style data set
    load_image = SupervisedDataset.load_image

    def __init__(
        self,
        entries: list[StreamEntry],
        processor,
        image_folder: str | Path | None = None,
        template: str = "qwen_1_5",
        max_length: int = 16384,
        strict: bool = False,
        model_config=None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        world_size: int = 1,
        rank: int = 0,
        batch_size: int = 1,
        skip_corrupt: bool = False,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template {template!r}: use one of {sorted(TEMPLATES)}.")
        self.entries = entries
        self.pieces = [piece for entry in entries for piece in entry.pieces]
        if not self.pieces:
            raise ValueError("the data set is empty.")
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder else None
        self.template = TEMPLATES[template]
        check_template(self.template, processor.tokenizer)
        self.max_length, self.strict, self.model_config = max_length, strict, model_config
        self.images_kwargs = images_kwargs(processor)
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        self.world_size, self.rank, self.batch_size = world_size, rank, batch_size
        self.rows = sum(piece.kept() for piece in self.pieces)
        self.skip_corrupt = skip_corrupt
        self.corrupt: list[dict] = []  # skip records of unreadable pieces, handed to the next sample

    # -- the order ----------------------------------------------------------------------------------------------

    def _rng(self, *key) -> random.Random:
        return random.Random("llava_manager.streaming:" + ":".join(str(k) for k in (self.seed, *key)))

    def pass_pieces(self, epoch: int) -> list[Piece]:
        """The pieces of pass `epoch`, in reading order (permuted unless shuffle_buffer is 0)."""
        pieces = list(self.pieces)
        if self.shuffle_buffer > 0:
            self._rng("pieces", epoch).shuffle(pieces)
        return pieces

    def read(self, piece: Piece) -> Iterator[tuple[int, dict]]:
        """(mixture row number, record) of the kept rows of `piece`, in file order."""
        entry = self.entries[piece.entry]
        if entry.records is not None:
            first = piece.shard * JSON_PIECE
            for k, record in enumerate(entry.records[first : first + piece.rows]):
                if piece.keeps(k):
                    yield piece.start + k, record
            return
        import pyarrow as pa

        shard = entry.stream.shard(num_shards=entry.stream.num_shards, index=piece.shard).with_format("arrow")
        k = 0
        tables = shard.iter(batch_size=READ_BATCH)  # `.iter`, not `__iter__`: no splitting over workers here
        while True:
            try:
                table = next(tables, None)
            except (OSError, pa.ArrowException) as error:
                self._corrupt_piece(piece, k, error)
                return
            if table is None:
                return
            for record in arrow_records(table, piece.start - entry.start + k, entry.name):
                if piece.keeps(k):
                    yield piece.start + k, record
                k += 1

    def _corrupt_piece(self, piece: Piece, read: int, error: Exception) -> None:
        """Rows `read`.. of `piece` cannot be read: a `CorruptDataError`, or with `skip_corrupt` a skip record."""
        path, group = self.entries[piece.entry].locations[piece.shard]
        where = f"{path}" + (f" row group {group}" if group is not None else "")
        rows = f"rows {piece.start + read}-{piece.start + piece.rows - 1} of the mixture"
        if not self.skip_corrupt:
            raise CorruptDataError(
                f"cannot read {where} ({rows}): {one_line(error)}. Replace the file, or skip what cannot be read with "
                f"--skip_corrupt_data true (it is then counted in data_skipped.json)."
            ) from error
        logger.warning("skipping %s (%s): cannot read it: %s", where, rows, one_line(error))
        detail = f"{one_line(error)}; {piece.rows - read} rows not read"
        self.corrupt.append({"index": piece.start + read, "id": where, "reason": "corrupt data", "detail": detail})

    def reader_rows(self, reader: int, readers: int, epoch: int) -> Iterator[tuple[int, dict]]:
        """The rows reader `reader` of `readers` reads in pass `epoch`, before its shuffle buffer."""
        pieces = self.pass_pieces(epoch)
        if len(pieces) >= readers:
            for piece in pieces[reader::readers]:
                yield from self.read(piece)
        else:  # fewer pieces than readers (small data): every reader reads all, keeps every readers-th row
            k = 0
            for piece in pieces:
                for item in self.read(piece):
                    if k % readers == reader:
                        yield item
                    k += 1

    def reader_samples(self, reader: int, readers: int) -> Iterator[dict]:
        """Endless built samples of a reader, pass after pass."""
        if self.rows < readers:
            raise ValueError(
                f"{self.rows} rows for {readers} readers (world size x data loader workers): use fewer "
                f"workers or more data."
            )
        skipped: list[dict] = []
        epoch = 0
        while True:
            usable = False
            rows = self.reader_rows(reader, readers, epoch)
            for index, record in _shuffled(rows, self.shuffle_buffer, self._rng("rows", epoch, reader)):
                skipped += self.corrupt  # unreadable pieces met on the way (skip_corrupt)
                self.corrupt = []
                try:
                    sample = self.build(record)
                except SampleError as error:
                    name = record.get("id", "?") if isinstance(record, dict) else "?"
                    if self.strict:
                        raise ValueError(
                            f"sample {index} (id {name!r}): {error}. Run without --strict_data to skip such samples."
                        ) from error
                    skipped.append({"index": index, "id": str(name), "reason": error.reason, "detail": str(error)})
                    continue
                usable = True
                sample["skipped"], skipped = skipped, []
                yield sample
            if not usable:
                raise RuntimeError(
                    f"no usable sample in a whole pass of data reader {reader} of {readers}; the first "
                    f"problems: {skipped[:3]}"
                )
            epoch += 1
            logger.info("data reader %d of %d: pass %d", reader, readers, epoch)

    def __iter__(self) -> Iterator[dict | None]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        samples = self.reader_samples(self.rank * workers + worker_id, self.world_size * workers)
        if self.world_size == 1:
            yield from samples
            return
        # accelerate's IterableDatasetShard keeps elements [rank*batch, (rank+1)*batch) of every world*batch
        before = [None] * (self.rank * self.batch_size)
        after = [None] * ((self.world_size - self.rank - 1) * self.batch_size)
        while True:
            batch = [next(samples) for _ in range(self.batch_size)]
            yield from before
            yield from batch
            yield from after


def streaming_dataset(
    config, data_path, image_folder, data_args, training_args, processor, model_config=None
) -> StreamingSupervisedDataset:
    """The recipes' streamed data set (`--streaming`; `run_config.check_streaming` checked the flags it needs)."""
    seed = config.data_seed  # as train.build_dataset seeds load_records
    entries = stream_sources(data_path, seed)
    dataset = StreamingSupervisedDataset(
        entries,
        processor,
        image_folder,
        config.template,
        config.max_length,
        data_args.strict_data,
        model_config=model_config,
        seed=seed,
        shuffle_buffer=getattr(data_args, "shuffle_buffer", 1000),
        world_size=training_args.world_size,
        rank=training_args.process_index,
        batch_size=training_args.per_device_train_batch_size,
        skip_corrupt=data_args.skip_corrupt_data,
    )
    logger.info(
        "streaming %d rows in %d pieces (shuffle buffer %d, world size %d)",
        dataset.rows,
        len(dataset.pieces),
        dataset.shuffle_buffer,
        dataset.world_size,
    )
    return dataset
