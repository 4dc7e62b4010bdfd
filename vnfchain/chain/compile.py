"""Compile: C units become loaded XDP programs, through BCC.

The compiler's and the verifier's own lines are captured (BCC prints them on
file descriptor 2) and handed back inside CompileError / VerifierError.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..errors import CompileError, EnvironmentError_, VerifierError
from .render import Unit, lib_dir

CFLAGS = ["-Wno-unused-label", "-Wno-unused-function", "-Wno-macro-redefined"]


def bcc():
    try:
        import bcc as module
    except ImportError:
        raise EnvironmentError_(
            "BCC is not importable; install Debian's python3-bpfcc and use a venv made with "
            "`/usr/bin/python3 -m venv --system-site-packages` (scripts/setup.sh does both)") from None
    if not hasattr(module, "BPF"):
        raise EnvironmentError_(f"the 'bcc' module at {module.__file__} is the unrelated PyPI "
                                f"package; `pip uninstall bcc` and use Debian's python3-bpfcc")
    return module


class Captured:
    text = ""  # filled in when the capture ends


@contextlib.contextmanager
def captured_stderr():
    """Collect what C code (clang, libbpf, BCC) writes to fd 2: Python's
    sys.stderr never sees it."""
    captured = Captured()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


@dataclass
class LoadedUnit:
    unit: Unit
    bpf: Any                                 # bcc.BPF
    programs: dict[str, Any] = field(default_factory=dict)   # C function -> bcc Function

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


def compile_unit(unit: Unit, *, label: str, load: list[str] | None = None) -> LoadedUnit:
    """Compile ``unit`` and load its programs (or only those named in ``load``;
    its maps are created or opened from their pins either way). ``label`` names
    the chain in errors;
    the function at fault is named from the section the compiler or verifier blames
    (render turns each function's section into a #line directive naming it)."""
    BPF = bcc().BPF
    with captured_stderr() as err:
        try:
            bpf = BPF(text=unit.source.encode(), cflags=[f"-I{lib_dir()}"] + CFLAGS)
        except Exception:
            bpf = None
    if bpf is None:
        detail = _diagnostics(err.text, unit.name)
        function = _blamed(detail, first=True)
        raise CompileError(f"{_in(function)}{label} does not compile; the compiler said:",
                           function=function or "", detail=detail)
    loaded = LoadedUnit(unit, bpf)
    for cname, fname in unit.programs:
        if load is not None and cname not in load:
            continue
        with captured_stderr() as err:
            try:
                loaded.programs[cname] = bpf.load_func(cname.encode(), BPF.XDP)
                failure = None
            except Exception as exc:
                failure = str(exc)
        if failure is not None:
            loaded.close()
            log = err.text.strip()
            function = fname or _blamed(log, first=False)
            if "Argument list too long" in failure:     # E2BIG: the verifier's 1M-instruction budget
                what = f"function '{fname}'" if fname else "the fused chain program"
                raise VerifierError(
                    f"{label}: {what} is too complex for the kernel verifier (it explores at most "
                    f"1,000,000 instructions per program, counting every path through the code); "
                    + ("use mode: tailcall, where each function is verified on its own, or lighten the "
                       "chain (a smaller dpi max_scan, fewer dpi app rules)" if not fname else
                       "make the function lighter (for dpi: a smaller max_scan or fewer app rules)"),
                    function=function or "",
                    # BCC's own line blames the 4,096-instruction limit of unprivileged programs
                    detail="\n".join(ln for ln in log.splitlines() if "Program  too large" not in ln
                                      and "at most 4096 insns" not in ln))
            raise VerifierError(f"the kernel verifier rejected {_in(function)}{label} ({failure}); "
                                f"its log follows", function=function or "", detail=log)
    return loaded


def _in(function: str | None) -> str:
    return f"function '{function}' of " if function else ""


def _blamed(text: str, *, first: bool) -> str | None:
    """The function whose section a diagnostic (the first) or a verifier source
    note (the last, nearest the failing instruction) points into."""
    hits = re.findall(r"\(function (\S+) \(\S+\)\)", text)
    if not hits:
        return None
    return hits[0] if first else hits[-1]


def _diagnostics(text: str, unit_name: str) -> str:
    """clang's errors, with the virtual file name replaced by the unit's."""
    text = re.sub(r"/virtual/main\.c", unit_name, text)
    keep = [ln for ln in text.splitlines() if ln.strip() and "warning:" not in ln]
    return "\n".join(keep) or text
