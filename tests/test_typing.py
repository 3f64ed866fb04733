"""What a type checker sees: the README's code samples and the public types pass `mypy --strict`
and pyright's strict mode.

One mypy run checks every snippet: seconds on a fresh clone, less once its cache is warm, so
tests/conftest.py starts it in the background as soon as the tests to run are known, and the
tests here wait for its report.  A line expected
to be refused carries a ``# type: ignore[code]``: strict mode reports an ignore that is not
needed, so the refusal is checked too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

pytestmark = pytest.mark.typecheck

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mypy_cache" / "snippets"  # warm after the first run (.mypy_cache is ignored)

# Fragments of the README (without imports, or awaiting at top level) run inside a function
# given these.
PREAMBLE = """\
from typing import Any

import evenergy_async as ev


async def snippet(
    client: ev.Client, user: ev.User, token: str, records: list[dict[str, Any]]
) -> None:
"""

PUBLIC_TYPES = """\
from typing import Any

import evenergy_async as ev


async def check(client: ev.Client, user: ev.User) -> None:
    email: str = user.email  # type: ignore[assignment]
    if user.email:  # UNSET is falsy to the checker: one `if` narrows
        email = user.email
    if user.default_location:
        location: ev.Location = user.default_location
        if location.tariff:
            ref: ev.Ref[ev.Tariff] = location.tariff
            name: str = ref.value.name
            tariff: ev.Tariff = await ref
            tariff = await ref.resolve()
            tariff = await client.resolve(ref)
            supplier: ev.Supplier = await tariff.supplier
            supplier_name: str = supplier.name
            wrong: ev.Supplier = await ref  # type: ignore[assignment]
    anything: Any = await client.resolve("https://api.ev.energy/v2/vehicles/v")
    await client.users.get("me", expand=("default_location.tariff",))
    await client.users.get("me", expand="default_location.evse_site")
    await client.users.get("me", expand=("default_location.tarif",))  # type: ignore[arg-type]
    async for _ in client.users.list(resolve=["default_location.tariff.supplier"]):
        pass
    await client.tariffs.get("t", expand=("supplier", "prices"))
    await client.tariffs.get("t", expand=("default_location.tariff",))  # type: ignore[arg-type]
    location = ev.Location(country_code="GB", city=None)
    user = await client.users.update(user.id, default_location=location, email=ev.UNSET)
"""


def readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    snippets = []
    for block in blocks:
        if re.match(r"(import|from) ", block) and not re.search(r"^(async|await) ", block, re.M):
            snippets.append(block)
        else:
            snippets.append(PREAMBLE + textwrap.indent(block, "    "))
    return snippets


def write_snippets(folder: Path) -> list[Path]:
    """The public types' check and every README sample, one file each, in `folder`."""
    files = []
    for i, code in enumerate([PUBLIC_TYPES, *readme_snippets()]):
        path = folder / f"snippet_{i}.py"
        path.write_text(code)
        files.append(path)
    return files


class MypyRun:
    """One `mypy --strict` run over every snippet, in the background until `report()`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="evenergy-snippets-"))
        self.files = write_snippets(self.folder)
        # a file, not a pipe: nobody reads the output until the run is over
        self.log = (self.folder / "mypy.log").open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(CACHE),
             *map(str, self.files)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env={**os.environ, "MYPYPATH": str(ROOT)},
        )  # fmt: skip

    def report(self) -> tuple[int, str, list[Path]]:
        """Wait for mypy (a bound on a hang only); its exit status, output and the files."""
        try:
            status = self.process.wait(timeout=600)
            self.log.seek(0)
            return status, self.log.read(), self.files
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_run: MypyRun | None = None


def start_mypy() -> MypyRun:
    """Start the run (once).  tests/conftest.py calls this as soon as the tests to run are
    known, so mypy (seconds on a fresh clone, before its cache is warm) checks on a spare core
    while the rest of the suite runs, instead of holding the suite up when this module runs."""
    global _run
    if _run is None:
        _run = MypyRun()
    return _run


def stop_mypy() -> None:
    """End a run nobody waited for (the session stopped before this module ran)."""
    if _run is not None:
        _run.stop()


@pytest.fixture(scope="module")
def mypy_report() -> tuple[int, str, list[Path]]:
    return start_mypy().report()


def test_readme_has_python_samples() -> None:
    assert len(readme_snippets()) >= 5


def test_public_types_pass_mypy_strict(mypy_report: tuple[int, str, list[Path]]) -> None:
    _, output, files = mypy_report
    errors = [line for line in output.splitlines() if line.startswith(files[0].name)]
    assert errors == []
    assert f"checked {len(files)} source files" in output or "Success" in output


def test_readme_samples_pass_mypy_strict(mypy_report: tuple[int, str, list[Path]]) -> None:
    status, output, _ = mypy_report
    assert status == 0, output
    assert "Success: no issues found" in output


# pyright's checker, from basedpyright: the same engine with node and its JavaScript inside
# the wheels, so nothing is downloaded when it runs (the `pyright` wrapper fetches pyright from
# npm on first use).  Strict, and a `# type: ignore` that is not needed is an error, as in mypy.
PYRIGHT_CONFIG = {
    "typeCheckingMode": "strict",
    "reportUnnecessaryTypeIgnoreComment": "error",
    # The samples assign values to show their types, and list fields in expressions of their
    # own to show them.
    "reportUnusedVariable": "none",
    "reportUnusedExpression": "none",
}


def test_public_types_and_readme_samples_pass_pyright_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("basedpyright") is None:
        pytest.skip("basedpyright is not installed (the `test` extra has it)")
    files = [path.name for path in write_snippets(tmp_path)]
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(PYRIGHT_CONFIG))
    result = subprocess.run(
        [sys.executable, "-m", "basedpyright", "--pythonpath", sys.executable, *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # a bound on a hang only
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout
