"""The CLI's contract: config keys as flags, validation before any stage, one-line errors."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sas_ray import cli
from sas_ray import config as config_mod
from sas_ray.config import Config
from sas_ray.core.selection.registry import DESCRIPTIONS, SELECTORS
from sas_ray.errors import SasRayError

ROOT = Path(__file__).resolve().parents[2]
NO_RAY = "import sys; sys.modules['ray'] = None; from sas_ray.cli import main; "


def _run_without_ray(args: list[str]) -> tuple[int, str, float]:
    """Run ``main(args)`` in a fresh interpreter where ``import ray`` fails; -> exit code,
    stderr and the CPU seconds it took (wall time on this shared test machine varies with
    the load; CPU time is what the command costs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", NO_RAY + f"sys.exit(main({args!r}))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return proc.returncode, proc.stderr.strip(), cpu


@pytest.mark.parametrize(("flags", "message"), [
    (["--model.arch", "resnet99"], "'model.arch': 'resnet99' is not allowed; use one of: "
                                   "resnet10, resnet18, resnet34, resnet50"),
    (["--train.optimizer", "adamw"], "'train.optimizer': 'adamw' is not allowed"),
    (["--select.strategies", "sas,sass"], "'sass' is not allowed; did you mean 'sas'?"),
    (["--latent.k", "0"], "'latent.k' must be >= 1, got 0"),
    (["--analyze.compare", "sas"], "'analyze.compare': 'sas' is not a pair of two strategies"),
    (["--analyze.compare", "sas:randm"], "'randm' is not allowed; did you mean 'random'?"),
    (["--train.batch_size", "4", "--train.num_workers", "4"], "leaves < 2 images per worker"),
    (["--data.source", "/no/such/images"], "'data.source': /no/such/images does not exist"),
])
def test_pipeline_config_mistakes_fail_fast_without_ray(flags: list[str], message: str,
                                                        tmp_path: Path) -> None:
    code, err, cpu_seconds = _run_without_ray(
        ["pipeline", "--run.storage", str(tmp_path / "out"), *flags])
    assert code == 2 and "\n" not in err and message in err, err
    assert err.startswith("sas-ray pipeline: error: ")
    assert cpu_seconds < 5
    assert not (tmp_path / "out").exists()  # no stage started


def test_every_subcommand_help_names_overrides_and_documents_every_option(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"sas-ray {name}: {action.option_strings or action.dest}"
        text = " ".join(p.format_help().split())
        assert "--section.key VALUE" in text and "`sas-ray config` lists every key" in text
    with pytest.raises(SystemExit):
        cli.main(["select", "--help"])
    out = capsys.readouterr().out
    for strategy in SELECTORS:
        assert f"  {strategy} " in out
    assert set(DESCRIPTIONS) == set(SELECTORS)


def test_flags_are_config_keys() -> None:
    options = {name: {o for a in p._actions for o in a.option_strings}
               for name, p in next(a for a in cli.build_parser()._actions
                                   if a.dest == "command").choices.items()}
    assert "--proxy" not in options["embed"] and "--strategy" not in options["select"]
    assert "--fraction" not in options["select"]


def test_embed_needs_proxy_checkpoint(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    assert cli.main(["embed", "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "pass --proxy.checkpoint PATH" in capsys.readouterr().err
    assert cli.main(["embed", "--data", str(tmp_path), "--out", str(tmp_path / "e"),
                     "--proxy.checkpoint", str(tmp_path / "absent.pt")]) == 2
    assert "'proxy.checkpoint': " in capsys.readouterr().err


def test_config_prints_the_resolved_config_as_yaml_that_loads_back(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 7\n")
    assert cli.main(["config", "--config", str(path), "--sweep.fractions", "0.2,0.4",
                     "--run.name", "a,b"]) == 0
    out = capsys.readouterr().out
    assert "  epochs: 7\n" in out and "  k: 10  # kmeans clusters\n" in out
    assert "# Approximate latent classes." in out
    (tmp_path / "resolved.yaml").write_text(out)
    expected = config_mod.load(path, {"sweep.fractions": [0.2, 0.4], "run.name": "a,b"})
    assert config_mod.load(tmp_path / "resolved.yaml") == expected
    assert set(yaml.safe_load(out)) == set(Config().to_dict())


# --- one line, exit 2, for every exception ---------------------------------------------------
def _raising(exc: BaseException) -> Callable[[str], Callable[..., None]]:
    def handler(cfg: Config, args: object) -> None:
        raise exc
    return lambda target: handler


@pytest.mark.parametrize(("exc", "message"), [
    (SasRayError("shards at x have no\n  'train' split"), "shards at x have no 'train' split"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"), "Permission denied: /data/x"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/disk/f.parquet"),
     "no space left on device writing /full/disk/f.parquet ("),
    (RuntimeError("CUDA error: device-side assert\ntriggered"),
     "RuntimeError: CUDA error: device-side assert (run with -v for the traceback)"),
    (type("RayTaskError", (Exception,), {"cause": SasRayError("inner cause")})("wrapper\nx"),
     "error: inner cause"),
])
def test_exceptions_are_one_line_with_exit_2(exc: BaseException, message: str,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "resolve", _raising(exc))
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert cli.main(["status", "-v"]) == 2  # -v: the traceback, then the same line
    verbose = capsys.readouterr().err
    assert verbose.startswith("Traceback") and verbose.endswith(err)


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "resolve", _raising(KeyboardInterrupt()))
    assert cli.main(["status"]) == 130
    assert capsys.readouterr().err == "sas-ray status: interrupted\n"


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  epochs: 1\n lr: 2\n", "cfg.yaml:3:2: invalid YAML"),
    ("train: 5\n", "config section 'train' must be a mapping"),
    ("\x00\x01binary", "cfg.yaml: invalid YAML"),
])
def test_bad_config_files_are_one_line(text: str, message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert cli.main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bad_override_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--sweep.fractions", "[0.2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config override --sweep.fractions" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_one_line_naming_the_output(tmp_path: Path) -> None:
    """A real ENOSPC: ingest into a 64 KiB tmpfs (the local executor: no Ray)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "shards"
        code, err, _ = _run_without_ray(["ingest", "synthetic", str(out),
                                         "--run.executor", "local"])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert code == 2 and "\n" not in err, err
    assert f"no space left on device writing {out} (" in err and "free there" in err


def test_validation_scopes() -> None:
    from sas_ray.validate import SCOPES, validate

    cfg = config_mod.apply(Config(), {"select.strategies": [], "sweep.include_full": False})
    validate(Config(), [s for s in SCOPES if s != "embed"])  # the defaults pass
    validate(cfg, ["all", "pipeline"])  # no strategies: fine where nothing is ranked
    for scope, message in (("sweep", "nothing to sweep"), ("select", "is empty")):
        with pytest.raises(SasRayError, match=message):
            validate(cfg, [scope])
