"""Decoding stored tree lines: the fast path for the usual file line gives exactly the
entry JSON parsing gives, and is taken only for lines that are exactly what the encoder
writes (a hostile snapshot's odd line is parsed, with JSON's own rules)."""

from __future__ import annotations

import json
import random

import pytest

from drkit.repository.tree import DIR, FILE, SYMLINK, Entry, decode_line, decode_lines, file_entry

_NAMES = ["/srv/x.txt", "rel/y", "/a b/c~d", "", "/d/ün", '/q"uote', "/back\\slash", "/nl\nx", "/\udcff", "/t\tab",
          "/del\x7f", "/{json}/[x]", "/p,q:r"]
_USERS = ["", "root", "www-data", "a b", 'q"', "ü"]


def _random_entry(rng: random.Random) -> Entry:
    size = rng.choice([0, 1, 4096, 2**40])
    return Entry(path=rng.choice(_NAMES), type=rng.choice([FILE, FILE, FILE, DIR, SYMLINK]),
                 mode=rng.choice([0, 0o644, 0o4755, 0o120777]), uid=rng.choice([0, 1000, 2**32 - 2]),
                 gid=rng.choice([0, 33]), user=rng.choice(_USERS), group=rng.choice(_USERS),
                 mtime_ns=rng.choice([0, 1733500000123456789]), size=size,
                 chunks=[f"{rng.getrandbits(256):064x}" for _ in range(rng.randint(1, 3))] if size else [],
                 target=rng.choice(["", "", "", "../t"]), inode=rng.choice([0, 77]),
                 ctime_ns=rng.choice([0, 1733500000987654321]), dev=rng.choice([0, 2049]))


def _plain(text: str) -> bool:
    return all(" " <= ch <= "~" and ch not in '"\\' for ch in text)


def test_the_usual_file_line_decodes_to_what_parsing_gives() -> None:
    rng = random.Random(11)
    fast = 0
    for _ in range(5000):
        e = _random_entry(rng)
        line = e.to_json().encode("ascii")
        parsed = Entry.from_json(line.decode("ascii"))
        assert parsed == e or not _plain(e.path)  # (a name that is not UTF-8 reads back as itself too)
        got = file_entry(line)
        usual = e.type == FILE and not e.target and all(_plain(t) for t in (e.path, e.user, e.group))
        if usual:
            assert got == parsed, line
            assert got is not None and type(got.mode) is int and got.chunks == e.chunks
            fast += 1
        else:
            assert got is None, line
        assert decode_line(line) == parsed
    assert fast > 300


@pytest.mark.parametrize("line", [
    b'{"path":"ok","type":"file","mode":420,"path":"../x"}',  # a key twice: JSON takes the last
    b'{"path":"ok","type":"file","mode":420,"size":5,"size":7}',
    b'{"path":"ok","type":"file","mode":420,"uid":0}',  # a zero the encoder leaves out
    b'{"path":"ok","type":"file","mode":420,"user":""}',
    b'{"path":"ok","type":"file","mode":0420}',  # not JSON
    b'{"path":"ok","type":"file","mode":-1}',
    b'{"path":"ok","type":"file","mode":420.0}',
    b'{"path":"ok","type":"file","mode":420,"size":1e3}',
    b'{"path":"ok", "type":"file","mode":420}',  # a space
    b'{"path":"ok","type":"file","mode":420} ',
    b'{"path":"ok","type":"file","mode":420}x',
    b'{"type":"file","path":"ok","mode":420}',  # another order
    b'{"path":"ok","type":"file","mode":420,"size":1,"chunks":["' + b"AB" * 32 + b'"]}',  # upper-case id
    b'{"path":"ok","type":"file","mode":420,"size":1,"chunks":["' + b"ab" * 31 + b'"]}',  # too short
    b'{"path":"ok","type":"file","mode":420,"size":1,"chunks":[]}',
    b'{"path":"a\\u002f..","type":"file","mode":420}',  # an escape
    b'{"path":"a\\"b","type":"file","mode":420}',
    b'{"path":"a\tb","type":"file","mode":420}',  # a control character: not JSON
    b'{"path":"a\x7fb","type":"file","mode":420}',
    b'{"path":"ok","type":"file","mode":420,"target":"/etc"}',
    b'{"path":"ok","type":"file","mode":420,"path_b64":"Li4veA=="}',
    b'{"path":"ok","type":"file","mode":420,"xattrs":{}}',
    b'{"path":"ok","type":"dir","mode":493}',
    b'{"path":"ok","type":"file"}',  # no mode: the encoder always writes it
])
def test_any_other_line_is_parsed_with_json_rules(line: bytes) -> None:
    assert file_entry(line) is None
    try:
        expected: Entry | type[Exception] = Entry.from_json(line.decode("ascii", "replace"))
    except (ValueError, TypeError) as exc:
        expected = type(exc)
    if isinstance(expected, Entry):
        assert decode_line(line) == expected
    else:
        with pytest.raises((ValueError, TypeError)):
            decode_line(line)


def test_the_path_a_hostile_line_names_last_is_the_one_decoded() -> None:
    line = b'{"path":"ok","type":"file","mode":420,"path":"../x"}'
    assert decode_line(line).path == "../x"  # (restore refuses it: the path escapes)
    assert json.loads(line)["path"] == "../x"


def test_decode_lines_splits_anywhere_and_decodes_every_line() -> None:
    rng = random.Random(12)
    entries = [_random_entry(rng) for _ in range(300)]
    stream = b"".join(e.to_json().encode("ascii") + b"\n" for e in entries)
    pieces = [stream[i : i + 61] for i in range(0, len(stream), 61)]
    assert list(decode_lines(pieces)) == [Entry.from_json(e.to_json()) for e in entries]
