"""Names that are not UTF-8 (any byte string a Linux file name can be) are stored as
plain JSON any parser accepts (``path_b64``/``target_b64``), and trees written before
(Python surrogate escapes, ``"\\udce9"``) keep being read."""

from __future__ import annotations

import json
import os

from drkit.repository.tree import FILE, SYMLINK, Entry, decode_lines, encode_entries


def test_a_non_utf8_name_is_plain_json_and_round_trips() -> None:
    path = os.fsdecode(b"/srv/latin1-\xe9t\xe9.txt")
    target = os.fsdecode(b"\xff\xfe")
    line = b"".join(encode_entries([Entry(path, SYMLINK, target=target)])).decode("ascii")
    doc = json.loads(line)
    doc_text = json.dumps(doc, ensure_ascii=False)
    doc_text.encode("utf-8")  # no lone surrogates: strict parsers accept it
    assert "\\udc" not in line
    assert doc["path"] == "/srv/latin1-\ufffdt\ufffd.txt"  # display form
    assert doc["path_b64"] == "L3Nydi9sYXRpbjEt6XTpLnR4dA=="
    [back] = list(decode_lines([line.encode()]))
    assert os.fsencode(back.path) == b"/srv/latin1-\xe9t\xe9.txt"
    assert os.fsencode(back.target) == b"\xff\xfe"


def test_utf8_names_are_unchanged() -> None:
    line = Entry("/srv/caf\u00e9", FILE).to_json()
    assert json.loads(line) == {"path": "/srv/caf\u00e9", "type": "file", "mode": 0o644}


def test_trees_written_with_surrogate_escapes_are_still_read() -> None:
    old = b'{"path":"/srv/latin1-\\udce9t\\udce9.txt","type":"file","size":3}\n'
    [entry] = list(decode_lines([old]))
    assert os.fsencode(entry.path) == b"/srv/latin1-\xe9t\xe9.txt" and entry.size == 3
