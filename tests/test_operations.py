"""Day-to-day operations through the real servers: golden boards, offline replay of one
message, dead letters replayed once the cause is fixed, and a line that keeps running while
Redis is unreachable (its counters rebuilt afterwards)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import redis
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner

from board_data.synthetic import BoardGenerator
from infra.db import make_engine, verdicts
from infra.images import encode_png
from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings, settings_env
from linecheck.cli import app
from linecheck.processes import start_workers, stop_workers, wait_ready
from producers.publisher import BoardPublisher
from schemas.events import DeadLetter, FlaggedBoard, ImageRef, Verdict
from tests.helpers import wait_until


def _audited(settings: Settings, ids: list[str]) -> dict[str, str]:
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(verdicts.c.event_id, verdicts.c.verdict).where(
                    verdicts.c.event_id.in_(ids)
                )
            ).all()
        return {str(e): str(v) for e, v in rows}
    finally:
        engine.dispose()


def test_templates_add_list_remove_and_inspect_one_message(
    settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(settings)
    runner = CliRunner()
    board = BoardGenerator(seed=21, defect_rate=1.0).board(0)
    template_file = tmp_path / "golden.png"
    template_file.write_bytes(encode_png(board.template))
    added = runner.invoke(app, ["templates", "add", "golden-1", str(template_file)], env=env)
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["templates", "list"], env=env)
    assert "golden-1" in listed.output and "640x640" in listed.output
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    refused = runner.invoke(app, ["templates", "add", "golden-2", str(junk)], env=env)
    assert refused.exit_code == 1 and "not a decodable image" in " ".join(refused.output.split())

    message = tmp_path / "event.json"
    good = FlaggedBoard(
        line="L1", machine="m", product="P", board_serial="S1", template_id="golden-1",
        image=ImageRef(data=encode_png(board.image)),
    )  # fmt: skip
    message.write_bytes(good.model_dump_json().encode())
    ok = runner.invoke(app, ["inspect", str(message)], env=env)
    assert ok.exit_code == 0, ok.output
    verdict = Verdict.model_validate_json(ok.stdout)
    assert verdict.event_id == good.event_id and verdict.roi_method == "reference"

    assert runner.invoke(app, ["templates", "remove", "golden-1"], env=env).exit_code == 0
    missing = runner.invoke(app, ["inspect", "-"], input=message.read_bytes(), env=env)
    assert missing.exit_code == 3
    letter = DeadLetter.model_validate_json(missing.stdout)
    assert letter.stage == "template" and "golden-1" in letter.reason


def test_dead_letters_replayed_after_the_fix_and_a_line_without_redis(
    settings: Settings, tmp_path: Path
) -> None:
    """Redis hung for the whole run (it accepts and never answers): verdicts and audit rows
    still flow, each batch waiting at most the Redis timeout; the
    template-less boards are dead letters until the template is added and they are replayed;
    `stats rebuild` then recomputes the counters from the audit store."""
    env = settings_env(settings)
    runner = CliRunner()
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    hung = _black_hole()  # accepts connections and never answers: a hung Redis
    no_redis = settings.model_copy(deep=True)
    no_redis.redis.url = SecretStr(f"redis://127.0.0.1:{hung.getsockname()[1]}/0")
    no_redis.redis.timeout_s = 0.5
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(
        settings.kafka.bootstrap_servers, settings.topics.flagged, store, 10**7
    )
    gen = BoardGenerator(seed=22)
    boards = [gen.board(i) for i in range(6)]
    late = boards[0].template_id  # this product's golden board arrives late
    for b in boards:
        if b.template_id != late:
            store.put_template(b.template_id, encode_png(b.template))
    workers = start_workers(no_redis, 1, settings.work_dir / "logs")
    try:
        wait_ready(workers)
        events = [
            publisher.publish(
                encode_png(b.image),
                line="L1",
                machine="m",
                product=b.product,
                board_serial=f"S{i}",
                template_id=b.template_id,
            )
            for i, b in enumerate(boards)
        ]
        publisher.flush()
        waiting = {e.event_id for e in events if e.template_id == late}
        decided = {e.event_id for e in events} - waiting
        assert waiting and decided
        wait_until(lambda: set(_audited(settings, list(decided))) == decided, 90, "audit rows")
        dead = wait_dead(settings, len(waiting))
        assert {d.event_id for d in dead} == waiting and {d.stage for d in dead} == {"template"}

        listed = runner.invoke(app, ["deadletters", "list", "--stage", "template"], env=env)
        assert listed.exit_code == 0 and f"{len(waiting)} dead letter(s)" in listed.output
        template_file = tmp_path / "late.png"
        template_file.write_bytes(encode_png(gen.template(late)))
        assert (
            runner.invoke(app, ["templates", "add", late, str(template_file)], env=env).exit_code
            == 0
        )
        replay = runner.invoke(app, ["deadletters", "replay", "--stage", "template"], env=env)
        assert replay.exit_code == 0, replay.output
        everyone = decided | waiting
        wait_until(lambda: set(_audited(settings, list(everyone))) == everyone, 90, "replayed")
    finally:
        stop_workers(workers)
        hung.close()
    assert workers[0].proc.returncode == 0, workers[0].tail()
    assert "live counters not updated" in workers[0].log_path.read_text()
    assert "Timeout" in workers[0].log_path.read_text()

    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    prefix = settings.redis.key_prefix
    assert not client.exists(f"{prefix}:totals")  # Redis never saw this run
    rebuilt = runner.invoke(app, ["stats", "rebuild"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    totals = {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}:totals").items()}
    audited = _audited(settings, list(everyone))
    assert sum(totals.values()) >= len(audited)  # the shared database may hold other tests' rows
    assert json.loads(rebuilt.stdout) == totals


def _black_hole() -> socket.socket:
    """A listening socket whose connections are accepted by the kernel and never answered."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


def wait_dead(settings: Settings, n: int) -> list[DeadLetter]:
    values = read_topic(
        settings.kafka.bootstrap_servers,
        settings.topics.deadletter,
        timeout=60,
        until=lambda v: len(v) >= n,
    )
    return [DeadLetter.model_validate_json(v) for v in values]


def test_image_policy_and_replaced_templates_through_a_running_worker(
    settings: Settings,
) -> None:
    """16-bit and colour boards are read as the policy says (not cut or flattened blindly),
    and a golden board replaced in the store is the one the next board is compared with."""
    from producers.hostile import sixteen_bit_and_colour

    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(
        settings.kafka.bootstrap_servers, settings.topics.flagged, store, 10**7
    )
    board = BoardGenerator(seed=23, defect_rate=1.0).board(0)
    store.put_template(board.template_id, encode_png(board.template))
    sixteen, colour = sixteen_bit_and_colour(board.image)
    common = dict(line="L1", machine="m", product=board.product, template_id=board.template_id)
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    try:
        wait_ready(workers)
        e8 = publisher.publish(encode_png(board.image), board_serial="B8", **common)  # type: ignore[arg-type]
        e16 = publisher.publish(sixteen, board_serial="B16", **common)  # type: ignore[arg-type]
        ergb = publisher.publish(colour, media_type="image/jpeg", board_serial="RGB", **common)  # type: ignore[arg-type]
        publisher.flush()
        ids = [e8.event_id, e16.event_id, ergb.event_id]
        wait_until(lambda: set(_audited(settings, ids)) == set(ids), 90, "three verdicts")
        # the golden board is re-scanned at another size: the worker must use the new one
        import numpy as np

        store.put_template(board.template_id, encode_png(np.full((320, 320), 255, np.uint8)))
        late = publisher.publish(encode_png(board.image), board_serial="AFTER", **common)  # type: ignore[arg-type]
        publisher.flush()
        dead = [d for d in wait_dead(settings, 1) if d.event_id == late.event_id]
    finally:
        stop_workers(workers)
    out = {
        v.event_id: v
        for v in (
            Verdict.model_validate_json(raw)
            for raw in read_topic(
                settings.kafka.bootstrap_servers,
                settings.topics.verdicts,
                timeout=30,
                until=lambda v: len(v) >= 3,
            )
        )
    }
    reference = [r.box for r in out[e8.event_id].regions]
    assert reference and [r.box for r in out[e16.event_id].regions] == reference
    assert out[ergb.event_id].regions  # the colour scan still shows the defects
    assert dead and dead[0].stage == "image" and "320x320" in dead[0].reason
