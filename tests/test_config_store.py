"""edge.config: the [store] table, [[store.forward]] groups, --forward and --store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import build_config, main, parse_run_args
from edge.config import ForwardGroup, StoreConfig, load_config
from store.paths import default_state_dir, store_dir
from tests.configutil import load_error, write

HUB = '[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:7422"\n'


def test_a_full_store_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HUB
        + """
[store]
dir = "/var/lib/leafgate"
min_free_disk = "128MB"
max_file_size = "2GB"
gateway_id = "site-7.gw"
max_inflight = 512
ack_timeout = "2s"
jetstream_domain = "hub"

[[store.forward]]
subjects = ["telemetry.>", "events.*"]
max_bytes = "1GB"
max_msgs = 1000000
max_age = "48h"
policy = "drop_oldest"

[[store.forward]]
name = "alarms"
subjects = "alarms.>"
durability = "commit"
policy = "reject"
confirm = "jetstream"
""",
    )
    store = load_config(path).store
    assert store == StoreConfig(
        dir="/var/lib/leafgate",
        groups=(
            ForwardGroup(
                subjects=("telemetry.>", "events.*"),
                name="default",
                max_bytes=1 << 30,
                max_msgs=1_000_000,
                max_age=48 * 3600.0,
                policy="drop_oldest",
            ),
            ForwardGroup(
                subjects=("alarms.>",),
                name="alarms",
                durability="commit",
                policy="reject",
                confirm="jetstream",
            ),
        ),
        min_free_disk=128 << 20,
        max_file_size=2 << 30,
        gateway_id="site-7.gw",
        max_inflight=512,
        ack_timeout=2.0,
        jetstream_domain="hub",
    )
    assert store.enabled


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (
            '[[store.forward]]\nsubjects = ["a.>"]\npolicy = "drop"\n',
            "store.forward[0].policy",
            'expected one of "drop_oldest", "drop_newest", "reject"',
        ),
        (
            '[[store.forward]]\nsubjects = ["a.>"]\ndurability = "disk"\n',
            "store.forward[0].durability",
            '"fsync", "commit", "memory"',
        ),
        (
            '[[store.forward]]\nsubjects = ["a.>"]\nconfirm = "yes"\n',
            "store.forward[0].confirm",
            '"auto", "jetstream", "link"',
        ),
        ("[[store.forward]]\nmax_msgs = 5\n", "store.forward[0]", "needs subjects"),
        (
            '[[store.forward]]\nsubjects = ["a..b"]\n',
            "store.forward[0].subjects[0]",
            "not a valid subject",
        ),
        ("[[store.forward]]\nsubjects = []\n", "store.forward[0].subjects", "at least one"),
        (
            '[[store.forward]]\nsubjects = ["a"]\nmax_bytes = "lots"\n',
            "store.forward[0].max_bytes",
            "expected a size",
        ),
        (
            '[[store.forward]]\nsubjects = ["a"]\nmax_msgs = -1\n',
            "store.forward[0].max_msgs",
            "at least 0",
        ),
        (
            '[[store.forward]]\nsubjects = ["a"]\nname = "x y"\n',
            "store.forward[0].name",
            "letters, digits",
        ),
        (
            '[[store.forward]]\nsubjects = ["a"]\n[[store.forward]]\nsubjects = ["b"]\n'
            'name = "default"\n',
            "store.forward[1].name",
            "already used by store.forward[0]",
        ),
        (
            '[[store.forward]]\nsubjects = ["a"]\nfrobnicate = 1\n',
            "store.forward[0].frobnicate",
            "unknown key",
        ),
        ('gateway_id = "a:b"\n', "store.gateway_id", "letters, digits"),
        ("max_inflight = 0\n", "store.max_inflight", "at least 1"),
        ("ack_timeout = 0\n", "store.ack_timeout", "greater than 0"),
        ("dirr = 1\n", "store.dirr", "unknown key (did you mean dir?)"),
        ('forward = "x"\n', "store.forward", "expected an array of tables"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    text = HUB + "[store]\n" + body if not body.startswith("[[") else HUB + body
    err = load_error(tmp_path, text)
    assert err.key == key
    assert words in str(err)


def test_forward_needs_a_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[[store.forward]]\nsubjects = ["telemetry.>"]\n')
    load_config(path)  # the file alone may leave the hub to --hub
    assert main(["check-config", "-c", path]) == 1
    assert "store.forward: store-and-forward needs a hub" in capsys.readouterr().err
    assert main(["check-config", "-c", path, "--hub", "nats-leaf://127.0.0.1:7422"]) == 0
    assert main(["run", "-t", "--forward", "telemetry.>"]) == 1
    assert "needs a hub" in capsys.readouterr().err


def test_forward_and_store_flags(tmp_path: Path) -> None:
    args = parse_run_args(
        [
            "--hub",
            "nats-leaf://h:7422",
            "--forward",
            "telemetry.>",
            "--forward",
            "events.*",
            "--store",
            str(tmp_path),
        ]
    )
    store = build_config(args).store
    assert store.groups == (ForwardGroup(subjects=("telemetry.>", "events.*")),)
    assert store.dir == str(tmp_path)
    # Over a file: --forward replaces the first group's subjects and keeps its settings.
    path = write(
        tmp_path,
        HUB + '[[store.forward]]\nsubjects = ["x"]\npolicy = "reject"\n'
        '[[store.forward]]\nsubjects = ["y"]\n',
    )
    store = build_config(parse_run_args(["-c", path, "--forward", "z.>"])).store
    assert [g.subjects for g in store.groups] == [("z.>",), ("y",)]
    assert store.groups[0].policy == "reject"
    assert store.groups[1].name == "group1"


def test_a_bad_forward_subject_names_the_flag_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-t", "--hub", "nats-leaf://h", "--forward", "a..b"]) == 1
    assert "store.forward[0].subjects[0]: not a valid subject" in capsys.readouterr().err


def test_default_state_directory() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/leafgate:/x"}) == Path(
        "/var/lib/leafgate"
    )
    assert default_state_dir({"XDG_STATE_HOME": "/h/s"}) == Path("/h/s/leafgate")
    assert default_state_dir({"HOME": "/home/pi"}) == Path("/home/pi/.local/state/leafgate")
    assert store_dir(StoreConfig(dir="/d")) == Path("/d")


def test_check_config_describes_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        HUB + '[store]\ndir = "/d"\n[[store.forward]]\nsubjects = ["t.>"]\nmax_msgs = 10\n',
    )
    assert main(["check-config", "-c", path]) == 0
    out = capsys.readouterr().out
    assert "store:             /d" in out
    assert "forward default: t.>; fsync, max_msgs 10, policy drop_oldest, confirm auto" in out
