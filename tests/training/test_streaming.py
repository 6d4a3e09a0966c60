"""Parquet / arrow shards with image bytes (the LLaVA-OneVision data release's layout): the embedded synthetic shard
set, the same samples as the same rows in LLaVA JSON, streaming, YAML mixtures of JSON and shards, bad rows skipped
and counted, and recipe runs on the shards (map-style and streamed, with an exact resume)."""

from __future__ import annotations

import json
import math
import re
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from accelerate.data_loader import IterableDatasetShard
from support.helpers import logged_losses
from torch.utils.data import DataLoader

from llava_manager.synthetic.data import tiny_processor
from llava_manager.synthetic.shards import BAD_REASONS, BAD_ROWS, ROW_GROUP, SUBSET, write_synthetic_shards
from llava_manager.training.data import SupervisedDataset, load_records
from llava_manager.training.shards import CorruptDataError
from llava_manager.training.streaming import StreamingSupervisedDataset, stream_sources
from llava_manager.training.train import run
from llava_manager.training.train_args import _CHECKPOINTING

RUN = ["--dataloader_num_workers", "0", "--save_steps", "100", "--logging_steps", "1", f"--{_CHECKPOINTING}", "false"]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """The map-style path converts parquet into the `datasets` cache: keep it out of the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "datasets_cache")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), n=40, shards=2, seed=0)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def same_sample(a: dict, b: dict) -> bool:
    keys = set(a) - {"skipped"}
    return keys == set(b) - {"skipped"} and all(torch.equal(a[k], b[k]) for k in keys)


def skips(sample: dict) -> list[tuple[str, str]]:
    return [(s["id"], s["reason"]) for s in sample["skipped"]]


def test_the_synthetic_shards_have_the_release_layout(shards):
    assert [f.relative_to(shards["folder"]).as_posix() for f in shards["files"]] == [
        f"{SUBSET}/train-00000-of-00002.parquet",
        f"{SUBSET}/train-00001-of-00002.parquet",
    ]
    schema = pq.read_schema(shards["files"][0])
    assert schema.names == ["id", "image", "conversations", "data_source"]
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(schema.field("conversations").type) == "list<element: struct<from: string, value: string>>"
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"]["_type"] == "Image"  # what `datasets` decodes as an image
    rows = pq.read_table(shards["files"]).to_pylist()
    assert len(rows) == 44 and {r["data_source"] for r in rows} == {SUBSET}
    assert any(r["image"] is None for r in rows if r["id"].startswith("text-"))  # text-only rows: a null image
    assert {r["id"] for r in rows} >= set(BAD_ROWS)
    assert pq.ParquetFile(shards["files"][0]).metadata.num_row_groups == math.ceil(22 / ROW_GROUP)


def test_shards_give_the_same_samples_as_the_same_rows_in_llava_json(shards, processor):
    from_json = SupervisedDataset(load_records(shards["json"]), processor, shards["image_folder"])
    from_shards = SupervisedDataset(load_records(shards["folder"]), processor)  # no image folder: bytes in the rows
    assert len(from_json) == len(from_shards) == 44
    for i in range(len(from_json)):
        a, b = from_json[i], from_shards[i]
        assert same_sample(a, b) and skips(a) == skips(b), i
    reported = {s["id"]: s["reason"] for i in range(44) for s in from_shards[i]["skipped"]}
    assert reported == BAD_REASONS
    # the samplers' length estimate (--group_by_modality_length, --token_budget): the same, images unread
    from llava_manager.training.lengths import dataset_lengths

    assert dataset_lengths(from_shards) == dataset_lengths(from_json)
    light = list(from_shards.records.without_image_bytes())
    assert [r.get("image") is not None for r in light] == [r.get("image") is not None for r in from_json.records]
    # a file, a glob, a list: the same rows
    for source in (shards["files"][1], shards["folder"] / "*" / "train-0000[01]-*.parquet"):
        records = load_records(source)
        assert [r["id"] for r in records] == [r["id"] for r in shards["rows"][-len(records) :]]


def test_streaming_yields_the_same_sequence_and_starts_again_each_pass(shards, processor):
    records = load_records(shards["folder"])
    mapped = SupervisedDataset(records, processor)
    good = [i for i, r in enumerate(records) if r["id"] not in BAD_ROWS]
    stream = StreamingSupervisedDataset(stream_sources(shards["folder"]), processor, shuffle_buffer=0)
    samples = iter(stream)
    for _ in range(2):  # endless: the second pass is the first again (no shuffling)
        got = [next(samples) for _ in good]
        assert all(same_sample(g, mapped[i]) for g, i in zip(got, good))
        assert [s for g in got for s in skips(g)] == [
            (r, BAD_REASONS[r]) for r in [r["id"] for r in records if r["id"] in BAD_ROWS]
        ]
        assert skips(got[0]) == [] and skips(got[1]) == [("bad-bytes", "corrupt image")]  # on the next good sample
    strict = StreamingSupervisedDataset(stream_sources(shards["folder"]), processor, shuffle_buffer=0, strict=True)
    samples = iter(strict)
    with pytest.raises(ValueError, match="id 'bad-bytes'.*corrupt image"):
        [next(samples) for _ in range(3)]


def ids(samples, tokenizer) -> list[str]:  # a sample's identity: its tokens (ids are not kept in samples)
    return [tokenizer.decode(s["input_ids"]) + str(s.get("pixel_values", torch.zeros(1)).sum().item()) for s in samples]


def test_shuffled_streams_are_deterministic_and_split_over_ranks_and_workers(shards, processor):
    entries = stream_sources(shards["folder"])
    tok = processor.tokenizer
    one = StreamingSupervisedDataset(entries, processor, shuffle_buffer=16, seed=3)
    pass_rows = [r for _, r in one.reader_rows(0, 1, 0) if r["id"] not in BAD_ROWS]
    first = [s for s, _ in zip(iter(one), range(len(pass_rows)))]
    again = [s for s, _ in zip(iter(one), range(len(pass_rows)))]
    assert ids(first, tok) == ids(again, tok)  # a pure function of the seed
    expected = SupervisedDataset(pass_rows, processor)
    assert sorted(ids(first, tok)) == sorted(ids([expected[i] for i in range(len(pass_rows))], tok))  # each row once
    assert ids(first, tok) != ids([expected[i] for i in range(len(pass_rows))], tok)  # shuffled

    # two ranks, batch 2: accelerate's IterableDatasetShard keeps each rank's slice; no placeholder leaks, each rank
    # builds only its own reader's rows, and the two readers split the rows of a pass
    per_rank = []
    for rank in (0, 1):
        dataset = StreamingSupervisedDataset(
            entries, processor, shuffle_buffer=16, seed=3, world_size=2, rank=rank, batch_size=2
        )
        own = [r for _, r in dataset.reader_rows(rank, 2, 0) if r["id"] not in BAD_ROWS]
        got = [
            s
            for s, _ in zip(
                IterableDatasetShard(dataset, batch_size=2, num_processes=2, process_index=rank), range(len(own))
            )
        ]
        assert all(s is not None for s in got)
        built = SupervisedDataset(own, processor)
        assert sorted(ids(got, tok)) == sorted(ids([built[i] for i in range(len(own))], tok))
        per_rank.append(own)
    assert sorted(r["id"] for own in per_rank for r in own) == sorted(r["id"] for r in pass_rows)

    # two loader workers: batches alternate between the workers' readers
    loader = DataLoader(one, batch_size=2, num_workers=2, collate_fn=list)
    batches = [b for b, _ in zip(loader, range(4))]
    readers = [one.reader_samples(w, 2) for w in (0, 1)]
    want = [[next(readers[k % 2]) for _ in range(2)] for k in range(4)]
    assert [ids(b, tok) for b in batches] == [ids(w, tok) for w in want]


def test_a_yaml_mixes_llava_json_and_shards_with_sampling_strategies(shards, processor, tmp_path):
    folder = shards["folder"].as_posix()
    (tmp_path / "mix.yaml").write_text(
        f"datasets:\n"
        f"  - json_path: {shards['json'].as_posix()}\n    sampling_strategy: first:5\n"
        f"  - data_files: {folder}/{SUBSET}\n    sampling_strategy: random:50%\n"
        f"  - data_files: ['{folder}/*/train-00001-*.parquet']\n    sampling_strategy: end:3\n"
    )
    records = load_records(tmp_path / "mix.yaml", seed=1)
    rows = [r["id"] for r in shards["rows"]]
    chosen = [r["id"] for r in records]
    assert len(records) == 5 + 22 + 3 and chosen[:5] == rows[:5] and chosen[-3:] == rows[-3:]
    assert len(set(chosen[5:27])) == 22 and set(chosen[5:27]) <= set(rows)
    assert chosen[5:27] == [r["id"] for r in load_records(tmp_path / "mix.yaml", seed=1)][5:27]  # seeded
    assert chosen[5:27] != [r["id"] for r in load_records(tmp_path / "mix.yaml", seed=2)][5:27]
    # the stream keeps the same rows (in file order)
    entries = stream_sources(tmp_path / "mix.yaml", seed=1)
    stream = StreamingSupervisedDataset(entries, processor, shuffle_buffer=0)
    streamed = [r["id"] for _, r in stream.reader_rows(0, 1, 0)]
    assert sorted(streamed) == sorted(chosen)
    assert streamed[5:27] == [r for r in rows if r in set(chosen[5:27])]
    with pytest.raises(ValueError, match="one json_path .* or data_files"):
        (tmp_path / "bad.yaml").write_text("datasets:\n  - parquet: x\n")
        load_records(tmp_path / "bad.yaml")


def test_arrow_files_read_like_the_parquet_shards(shards, processor, tmp_path):
    import datasets

    datasets.load_dataset("parquet", data_files=[str(f) for f in shards["files"]], split="train").save_to_disk(
        str(tmp_path / "arrow"), num_shards=2
    )
    assert len(list((tmp_path / "arrow").glob("*.arrow"))) > 1
    parquet, arrow = (
        SupervisedDataset(load_records(shards["folder"]), processor),
        SupervisedDataset(load_records(tmp_path / "arrow"), processor),
    )
    assert all(same_sample(parquet[i], arrow[i]) for i in range(len(parquet)))
    stream = StreamingSupervisedDataset(stream_sources(tmp_path / "arrow"), processor, shuffle_buffer=0)
    good = [i for i in range(44) if shards["rows"][i]["id"] not in BAD_ROWS]
    assert all(same_sample(s, parquet[i]) for s, i in zip(iter(stream), good))


def test_recipe_runs_on_a_mixture_of_json_and_shards_counting_bad_rows(shards, tmp_path):
    (tmp_path / "mix.yaml").write_text(
        f"datasets:\n  - json_path: {shards['json'].as_posix()}\n    sampling_strategy: first:4\n"
        f"  - data_files: {shards['subset'].as_posix()}\n"
    )
    args = [
        "--data_path",
        str(tmp_path / "mix.yaml"),
        "--image_folder",
        str(shards["image_folder"]),
        "--per_device_train_batch_size",
        "16",
        *RUN,
    ]
    run("stage2", args + ["--max_steps", "3", "--output_dir", str(tmp_path / "map")])  # 48 rows: one epoch
    summary = json.loads((tmp_path / "map" / "data_skipped.json").read_text())
    # the JSON's first 4 rows hold bad-bytes too (its image file): counted alike
    assert summary["by_reason"] == {"corrupt image": 3, "malformed": 2}
    assert {(s[1], s[2]) for s in summary["samples"]} == set(BAD_REASONS.items())

    run("stage2", args + ["--max_steps", "3", "--streaming", "true", "--output_dir", str(tmp_path / "stream")])
    summary = json.loads((tmp_path / "stream" / "data_skipped.json").read_text())
    assert {(s[1], s[2]) for s in summary["samples"]} == set(BAD_REASONS.items())
    state = json.loads((tmp_path / "stream" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and all(math.isfinite(e["loss"]) for e in state["log_history"] if "loss" in e)
    with pytest.raises(ValueError, match="--max_steps"):
        run("stage2", args + ["--streaming", "true", "--output_dir", str(tmp_path / "x")])


def test_a_streamed_run_resumes_exactly_across_passes(shards, tmp_path):
    # 40 good rows, batch 8: a pass is 5 steps; the checkpoint at step 6 is in the second pass
    args = [
        "--data_path",
        str(shards["folder"]),
        "--streaming",
        "true",
        "--shuffle_buffer",
        "8",
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "8",
        "--data_seed",
        "5",
        *RUN,
    ]
    full = tmp_path / "full"
    run("stage2", args + ["--output_dir", str(full), "--save_steps", "6"])
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-6", resumed / "checkpoint-6")
    run(
        "stage2",
        args
        + [
            "--output_dir",
            str(resumed),
            "--save_steps",
            "100",
            "--resume_from_checkpoint",
            str(resumed / "checkpoint-6"),
        ],
    )

    def losses(out):
        state = json.loads((out / "trainer_state.json").read_text())
        return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}

    assert losses(resumed) == losses(full) and sorted(losses(full)) == list(range(1, 9))


# ---- unreadable data files ---------------------------------------------------------------------------------------


def _corrupt_copy(shards, tmp_path, group: int = 1):
    """The shard folder with row group `group` of the first file unreadable (its first page header overwritten, as
    a bad disk or a cut download leaves it); its footer, and the other row groups, still read."""
    folder = tmp_path / "corrupt"
    shutil.copytree(shards["folder"], folder)
    path = folder / shards["files"][0].relative_to(shards["folder"])
    column = pq.ParquetFile(path).metadata.row_group(group).column(0)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset : column.data_page_offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return folder, path


def _unreadable_piece(folder, path) -> tuple[str, range]:
    """What a stream of `folder` loses: row group 1 of `path` (rows 8-15 of the mixture) where `datasets` streams
    parquet by row group (`reshard()` in 5.2); the whole file, from its first read, where it streams whole files
    (4.6, the oldest allowed: `_shard_stream` falls back to them)."""
    if stream_sources(folder)[0].locations[0][1] is not None:
        return f"{path} row group 1", range(ROW_GROUP, 2 * ROW_GROUP)
    return str(path), range(pq.ParquetFile(path).metadata.num_rows)


def test_an_unreadable_row_group_is_named_or_skipped_and_reported(shards, processor, tmp_path):
    folder, path = _corrupt_copy(shards, tmp_path)
    where, lost = _unreadable_piece(folder, path)
    records = load_records(shards["folder"])  # the clean rows, map-style
    good = [i for i, r in enumerate(records) if r["id"] not in BAD_ROWS and i not in lost]
    samples = iter(StreamingSupervisedDataset(stream_sources(folder), processor, shuffle_buffer=0))
    rows = rf"\(rows {lost.start}-{lost.stop - 1} of"
    with pytest.raises(CorruptDataError, match=rf"cannot read {re.escape(where)} {rows}"):
        [next(samples) for _ in good]
    stream = StreamingSupervisedDataset(stream_sources(folder), processor, shuffle_buffer=0, skip_corrupt=True)
    samples = iter(stream)
    got = [next(samples) for _ in good]
    mapped = SupervisedDataset(records, processor)
    assert all(same_sample(g, mapped[i]) for g, i in zip(got, good))
    corrupt = [s for g in got for s in g["skipped"] if s["reason"] == "corrupt data"]
    assert [(c["index"], c["id"]) for c in corrupt] == [(lost.start, where)]
    assert corrupt[0]["detail"].endswith(f"{len(lost)} rows not read")


def test_a_run_that_meets_an_unreadable_row_group_stops_naming_it_and_the_step(shards, tmp_path):
    folder, path = _corrupt_copy(shards, tmp_path)
    where, _ = _unreadable_piece(folder, path)
    args = ["--data_path", str(folder), "--streaming", "true", "--shuffle_buffer", "0"]
    args += ["--per_device_train_batch_size", "4", "--max_steps", "6", "--data_seed", "5", *RUN]
    # rows 0-7 (one bad) fill step 1 and most of step 2; row group 1 is reached while reading step 2's batch, which
    # the loader reads at step 1 (one batch ahead)
    with pytest.raises(
        CorruptDataError,
        match=rf"step 1 \(reading its batch or the next\): cannot read {re.escape(where)} \(rows",
    ):
        run("stage2", args + ["--output_dir", str(tmp_path / "strict")])
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(
        "stage2",
        args
        + ["--skip_corrupt_data", "true", "--output_dir", str(full), "--save_steps", "2", "--save_total_limit", "5"],
    )
    summary = json.loads((full / "data_skipped.json").read_text())
    # once a pass that reaches it (whole-file pieces: the 6 steps run into the second pass)
    assert summary["by_reason"]["corrupt data"] >= 1
    assert [s[1] for s in summary["samples"] if s[2] == "corrupt data"] == [where]
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    run(
        "stage2",
        args + ["--skip_corrupt_data", "true", "--output_dir", str(resumed), "--resume_from_checkpoint", "last"],
    )
    assert logged_losses(resumed) == logged_losses(full)
    assert json.loads((resumed / "data_skipped.json").read_text()) == summary


def test_unreadable_files_read_whole_are_errors_before_training(shards, tmp_path):
    folder, path = _corrupt_copy(shards, tmp_path)
    with pytest.raises(
        CorruptDataError, match=rf"{re.escape(str(path))} row group 1: .*--streaming --skip_corrupt_data"
    ):
        load_records(folder)
    with pytest.raises(ValueError, match="--skip_corrupt_data skips unreadable pieces of a stream"):
        run("stage2", ["--data_path", str(folder), "--skip_corrupt_data", "true", "--output_dir", str(tmp_path / "x")])
    path.write_bytes(path.read_bytes()[:-100])  # the footer cut off
    with pytest.raises(CorruptDataError, match=rf"{re.escape(str(path))}: not a readable parquet file"):
        stream_sources(folder)
