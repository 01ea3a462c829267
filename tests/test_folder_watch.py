"""Folder ingest (`linecheck watch`) and its sorter: the pure parts alone, then the whole
flow through the real broker, PostgreSQL and a real worker process."""

from __future__ import annotations

import base64
import hashlib
import itertools
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
import typer
from confluent_kafka import Producer
from typer.testing import CliRunner

from infra.db import make_engine, verdicts
from infra.images import decode_gray, encode_png
from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings, settings_env
from linecheck.cli.ingest import build_watcher, register
from linecheck.processes import start_workers, stop_workers
from producers.folder_watch import (
    FileResult,
    Journal,
    SettleTracker,
    WatchOptions,
    event_id_for,
    journal_path,
    watched,
)
from producers.hostile import png_with_header
from producers.simulator import synthetic_samples
from schemas.events import DeadLetter, FlaggedBoard, ImageRef, Verdict
from tests.helpers import make_verdict, wait_until
from workers.sorter import CSV_NAME, VerdictSorter, consume_verdicts


def test_a_file_settles_once_size_and_mtime_stop_changing() -> None:
    tracker = SettleTracker(1.0)
    path = Path("board.png")
    tracker.add(path)
    assert not tracker.observe(path, 100, 1, now=10.0)  # first look
    assert not tracker.observe(path, 100, 1, now=10.5)
    assert not tracker.observe(path, 200, 2, now=10.9)  # it grew: the clock starts again
    assert not tracker.observe(path, 200, 3, now=11.5)  # touched, same size
    assert not tracker.observe(path, 200, 3, now=12.4)
    assert tracker.observe(path, 200, 3, now=12.5)
    tracker.forget(path)
    assert path not in tracker and tracker.paths == []
    assert watched("B-1.png") and not watched(".B-1.png") and not watched("B-1.png.part")


def test_event_ids_are_stable_per_file_name_content_and_machine() -> None:
    one = event_id_for("L1", "aoi-1", "B-1.png", "ab" * 32)
    assert one == event_id_for("L1", "aoi-1", "B-1.png", "ab" * 32)
    others = {
        event_id_for("L1", "aoi-1", "B-2.png", "ab" * 32),
        event_id_for("L1", "aoi-1", "B-1.png", "cd" * 32),
        event_id_for("L2", "aoi-1", "B-1.png", "ab" * 32),
    }
    assert one not in others and len(others) == 3
    image = ImageRef(uri="file:///x.png")
    FlaggedBoard(event_id=one, line="L", machine="m", product="p", board_serial="s", image=image)


def test_the_journal_keeps_the_first_intent_and_survives_a_reopen(tmp_path: Path) -> None:
    path = journal_path(tmp_path)
    journal = Journal(path)
    first = journal.intend("e1", "B-1.png", "s1", '{"a": 1}', "file:///x")
    again = journal.intend("e1", "B-1.png", "s1", '{"a": 2}', "file:///y")  # a retry
    assert first == again and again.event_json == '{"a": 1}' and again.state == "intent"
    journal.intend("e2", "B-2.png", "s2", "{}", None)
    journal.mark("e1", "published")
    journal.close()
    journal = Journal(path)
    try:
        assert [(e.event_id, e.state) for e in journal.unfinished()] == [
            ("e1", "published"),
            ("e2", "intent"),
        ]
        journal.mark("e1", "done")
        assert journal.find("B-1.png", "s1") == journal.get("e1")
        assert journal.find("B-1.png", "other") is None
        assert [e.event_id for e in journal.unfinished()] == ["e2"]
    finally:
        journal.close()


def _verdict(event_id: str, label: str = "fail") -> Verdict:
    return make_verdict(event_id, label, board_serial=event_id.upper(), board_score=0.9)


def test_the_sorter_files_a_board_once_and_drops_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    uri = store.put(b"png bytes")

    class Entry:
        def __init__(self, name: str) -> None:
            self.name, self.uri = name, uri

    def lookup(event_id: str) -> Entry | None:
        return Entry("B-1.png") if event_id in {"e1", "e2"} else None

    out = tmp_path / "out"
    sorter = VerdictSorter(out, lookup, store)
    assert sorter.handle(_verdict("e1")) == "filed"
    assert sorter.handle(_verdict("e1")) == "duplicate"  # redelivered
    assert sorter.handle(_verdict("x9")) == "foreign"
    assert (out / "fail" / "B-1.png").read_bytes() == b"png bytes"
    lines = (out / CSV_NAME).read_text().splitlines()
    assert lines[0].startswith("event_id,file,line,serial,verdict,board_score,n_regions")
    assert len(lines) == 2 and lines[1].startswith("e1,B-1.png,L1,E1,fail,0.9000,0,m1,")

    with (out / CSV_NAME).open("a") as f:
        f.write("e2,B-1.png,L1,E2,pa")  # the process died mid-line
    sorter = VerdictSorter(out, lookup, store)
    assert sorter.filed == {"e1"}
    assert sorter.handle(_verdict("e2", "pass")) == "filed"
    assert [line.split(",")[0] for line in (out / CSV_NAME).read_text().splitlines()] == [
        "event_id",
        "e1",
        "e2",
    ]


def _audit_rows(settings: Settings, ids: set[str]) -> list[tuple[str, str]]:
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        with engine.connect() as conn:
            query = sa.select(verdicts.c.event_id, verdicts.c.verdict)
            rows = conn.execute(query.where(verdicts.c.event_id.in_(ids)))
            return [(r[0], r[1]) for r in rows]
    finally:
        engine.dispose()


class _Sorting:
    """The sorter's consumer on a thread, as `linecheck watch --sort` runs it."""

    def __init__(self, settings: Settings, sorter: VerdictSorter) -> None:
        self.sorter, self._stop = sorter, threading.Event()
        self._thread = threading.Thread(
            target=consume_verdicts, args=(settings, sorter, self._stop)
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def _write_slowly(path: Path, data: bytes, chunks: int = 6, pause: float = 0.25) -> None:
    step = len(data) // chunks + 1
    with path.open("wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)


def test_watch_publishes_each_file_once_across_a_restart_and_sorts_the_verdicts(
    settings: Settings, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    bootstrap, topics = settings.kafka.bootstrap_servers, settings.topics
    ensure_topics(bootstrap, topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    boards = list(itertools.islice(synthetic_samples(seed=11, n_designs=1), 20))
    assert boards[0].template is not None and boards[0].template_id is not None
    store.put_template(boards[0].template_id, encode_png(boards[0].template))
    folder, out = (tmp_path / "aoi").resolve(), tmp_path / "sorted"
    folder.mkdir()
    options = WatchOptions(
        folder, "L7", "aoi-7", boards[0].product, boards[0].template_id, settle_s=0.8
    )
    names = [f"{b.serial}.png" for b in boards]
    ids = {
        n: event_id_for("L7", "aoi-7", n, hashlib.sha256(b.image).hexdigest())
        for n, b in zip(names, boards, strict=True)
    }

    # One worker and the sorter join their groups at once (a new group's first fetch is slow).
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    sorter_journal = Journal(journal_path(folder))
    sorter = _Sorting(settings, VerdictSorter(out, sorter_journal.get, store))
    try:
        # 1. Sixteen boards already there, four bad files, and a seventeenth written slowly.
        for name, board in zip(names[:16], boards[:16], strict=True):
            (folder / name).write_bytes(board.image)
        garbage = bytes(range(256)) * 12
        truncated = boards[1].image[: len(boards[1].image) // 2]
        (folder / "GARBAGE-1.png").write_bytes(garbage)
        (folder / "TRUNC-1.png").write_bytes(truncated)
        (folder / "bad\x07name.png").write_bytes(boards[2].image)
        (folder / "BOMB-1.png").write_bytes(png_with_header(60000, 60000))
        seen: list[FileResult] = []
        watcher = build_watcher(settings, options, store, seen.append)
        stop_watch = threading.Event()
        running = threading.Thread(target=watcher.run, args=(stop_watch,))
        running.start()
        _write_slowly(folder / names[16], boards[16].image)
        outcomes = lambda: Counter(r.outcome for r in seen)  # noqa: E731
        wait_until(lambda: outcomes() == {"published": 17, "rejected": 4}, 30, "17 + 4 files")
        stop_watch.set()
        running.join(10)
        watcher.close()
        sorter.stop()  # the command line's sorter takes over, in the same group

        # 2. A crash: one file with only its intent recorded, one acknowledged but not moved,
        # one sent whose ack was not recorded; and a published file dropped in again.
        for name, board in zip(names[17:], boards[17:], strict=True):
            (folder / name).write_bytes(board.image)
        crashed = build_watcher(settings, options, store)
        crashed.prepare(folder / names[17])
        crashed.send(crashed.prepare(folder / names[18]))
        unacked = crashed.prepare(folder / names[19])
        key = FlaggedBoard.model_validate_json(unacked.entry.event_json).key()
        crashed.publisher.send_raw(unacked.entry.event_json.encode(), key=key)
        crashed.close()
        shutil.copy(folder / ".published" / names[0], folder / names[0])

        # 3. The restart, through the command line: it exits once its boards are sorted.
        app = typer.Typer()
        app.callback()(lambda: None)
        register(app)
        args = ["watch", str(folder), "--line", "L7", "--machine", "aoi-7"]
        args += ["--product", boards[0].product, "--template-id", boards[0].template_id]
        args += ["--once", "--settle-s", "0.3", "--sort", str(out), "--sort-wait-s", "60"]
        restart = CliRunner().invoke(app, args, env=settings_env(settings))
        assert restart.exit_code == 0, restart.output

        wait_until(lambda: len(_audit_rows(settings, set(ids.values()))) == 20, 90, "20 rows")
        sorter = _Sorting(settings, VerdictSorter(out, sorter_journal.get, store))
        wait_until(lambda: len(sorter.sorter.filed) == 20, 60, "20 boards sorted")
        # A verdict delivered again, then one of a board not watched (same key: in order).
        first = read_topic(bootstrap, topics.verdicts, until=lambda v: len(v) >= 20, timeout=30)
        again = Verdict.model_validate_json(first[0])
        key = f"{again.line}:{again.board_serial}".encode()
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topics.verdicts, first[0], key=key)
        foreign = again.model_copy(update={"event_id": "not-watched"})
        producer.produce(topics.verdicts, foreign.model_dump_json().encode(), key=key)
        assert producer.flush(10) == 0
        producer.close()
        wait_until(lambda: sorter.sorter.counts["foreign"] >= 1, 30, "another board's verdict")
    finally:
        sorter.stop()
        stop_workers(workers)
        sorter_journal.close()
    assert workers[0].proc.returncode == 0, workers[0].tail()
    elapsed = time.monotonic() - t0

    # What the restart did: the intent sent again, the acknowledged and the re-dropped moved.
    output = restart.output
    assert "sorting verdicts into" in output
    assert f"republished {names[17]}" in output and f"republished {names[19]}" in output
    assert f"moved {names[18]}" in output and f"moved {names[0]}" in output

    # Every file published by claim check, once; only the one sent whose ack was not
    # recorded went twice, byte for byte the same.
    flagged = read_topic(bootstrap, topics.flagged, until=lambda v: len(v) >= 21, timeout=30)
    events = [FlaggedBoard.model_validate_json(v) for v in flagged]
    per_id = Counter(e.event_id for e in events)
    assert set(per_id) == set(ids.values())
    assert {i for i, n in per_id.items() if n > 1} == {ids[names[19]]}
    assert per_id[ids[names[19]]] == 2
    assert (
        len({v for v, e in zip(flagged, events, strict=True) if e.event_id == ids[names[19]]}) == 1
    )
    assert all(e.image.uri and e.image.data is None for e in events)
    slow = next(e for e in events if e.event_id == ids[names[16]])
    assert store.image_bytes(slow.image) == boards[16].image  # published once complete
    assert {e.board_serial for e in events} == {b.serial for b in boards}

    # One audit row and one verdict per board: the re-sent event was decided once.
    assert sorted(r[0] for r in _audit_rows(settings, set(ids.values()))) == sorted(ids.values())
    out_verdicts = [Verdict.model_validate_json(v) for v in read_topic(bootstrap, topics.verdicts)]
    decided: dict[str, set[tuple[str, str | None]]] = {}
    for v in out_verdicts:
        decided.setdefault(v.event_id, set()).add((v.verdict.value, v.event_sha256))
    assert set(decided) == set(ids.values()) | {"not-watched"}
    assert all(len(d) == 1 for d in decided.values())

    # The bad files: dead-lettered with their reason and original, moved aside.
    letters = [
        DeadLetter.model_validate_json(v)
        for v in read_topic(bootstrap, topics.deadletter, until=lambda v: len(v) >= 4)
    ]
    by_key = {d.key: d for d in letters}
    bad = {"GARBAGE-1.png", "TRUNC-1.png", "bad\x07name.png", "BOMB-1.png"}
    assert len(letters) == 4 and set(by_key) == bad
    assert all(d.source_topic == f"folder:{folder}" for d in letters)
    assert by_key["GARBAGE-1.png"].stage == "image"
    assert "'GARBAGE-1.png' is not a decodable image" in by_key["GARBAGE-1.png"].reason
    assert by_key["TRUNC-1.png"].stage == "image"
    assert "a PNG header claiming 640x640" in by_key["TRUNC-1.png"].reason
    assert by_key["bad\x07name.png"].stage == "validate"
    assert "not a valid board serial" in by_key["bad\x07name.png"].reason
    assert by_key["BOMB-1.png"].stage == "image"
    assert "60000x60000" in by_key["BOMB-1.png"].reason
    assert "(images.max_pixels)" in by_key["BOMB-1.png"].reason
    assert base64.b64decode(by_key["GARBAGE-1.png"].original_b64) == garbage
    assert base64.b64decode(by_key["TRUNC-1.png"].original_b64) == truncated
    rejected = folder / ".rejected"
    assert {p.name for p in rejected.iterdir()} == set(by_key)
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    assert sorted(p.name for p in (folder / ".published").iterdir()) == sorted(names)
    journal = Journal(journal_path(folder))
    assert journal.unfinished() == []
    assert all(journal.get(i) is not None for i in ids.values())
    journal.close()

    # The sorter: each board once in its verdict's folder and once in the CSV, the
    # redelivered verdict notwithstanding.
    rows = [line.split(",") for line in (out / CSV_NAME).read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(ids.values())
    label = {v.event_id: v.verdict.value for v in out_verdicts}
    for event_id, name, *_ in rows:
        assert (out / label[event_id] / name).read_bytes() == boards[names.index(name)].image
    assert sum(1 for _ in out.glob("*/*.png")) == 20
    assert sorter.sorter.counts["duplicate"] >= 1
    print(f"folder watch flow: {elapsed:.1f} s")


def test_delete_mode_removes_published_files_and_a_truncated_jpeg_is_rejected(
    settings: Settings, tmp_path: Path
) -> None:
    import cv2

    bootstrap, topics = settings.kafka.bootstrap_servers, settings.topics
    ensure_topics(bootstrap, topics, settings.kafka.partitions)
    board = next(synthetic_samples(seed=5))
    ok, jpeg = cv2.imencode(".jpg", decode_gray(board.image))
    assert ok
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "B-1.png").write_bytes(board.image)
    (folder / "J-1.jpg").write_bytes(jpeg.tobytes()[:-400])
    (folder / "B-2.png.part").write_bytes(b"still being copied")  # a writer's temporary name
    options = WatchOptions(folder, "L1", "aoi-1", board.product, delete=True, settle_s=0.1)
    watcher = build_watcher(settings, options)
    try:
        results = watcher.run_once()
    finally:
        watcher.close()
    assert sorted((r.name, r.outcome) for r in results) == [
        ("B-1.png", "published"),
        ("J-1.jpg", "rejected"),
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        ".linecheck-watch",
        ".rejected",
        "B-2.png.part",
    ]
    [event] = [FlaggedBoard.model_validate_json(v) for v in read_topic(bootstrap, topics.flagged)]
    assert event.board_serial == "B-1" and event.image.uri is not None
    [letter] = [DeadLetter.model_validate_json(v) for v in read_topic(bootstrap, topics.deadletter)]
    assert letter.stage == "image" and "truncated JPEG" in letter.reason
    assert (folder / ".rejected" / "J-1.jpg").exists()
