"""The README's Python example runs as written, against a daemon of the tests' own."""
from __future__ import annotations

import contextlib
import io
import re

from spawned_daemon import REPO, SpawnedDaemon


def readme_python_example(index: int = 0) -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)[index]


def test_the_readme_example_prints_what_its_comments_say(daemon: SpawnedDaemon) -> None:
    code = readme_python_example().replace("127.0.0.1:50051", daemon.address)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Python client)", "exec"), {})
    assert out.getvalue().splitlines() == ["8392704", "consumed | entry req-42 was consumed"]


def test_the_readme_local_path_example_prints_what_its_comments_say(daemon: SpawnedDaemon) -> None:
    code = readme_python_example(1).replace("127.0.0.1:50051", daemon.address)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Python client, local path)", "exec"), {})
    assert out.getvalue().splitlines() == ["[0.5 0.5 0.5]", "b'\\x02\\x02'", "SEALED"]
