"""What a type checker sees: the README's code samples and the public types pass `mypy --strict`.

One mypy run checks every snippet (a few seconds once its cache is warm).  A line expected
to be refused carries a ``# type: ignore[code]``: strict mode reports an ignore that is not
needed, so the refusal is checked too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, list[Path]]:
    folder = tmp_path_factory.mktemp("snippets")
    files = []
    for i, code in enumerate([PUBLIC_TYPES, *readme_snippets()]):
        path = folder / f"snippet_{i}.py"
        path.write_text(code)
        files.append(path)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(CACHE), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr, files


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
