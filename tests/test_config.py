import subprocess
import sys
import time
from pathlib import Path

import pytest

from jsddpm.cli import COMMANDS, main
from jsddpm.config import PRESET_DIR, from_container, load_config, to_container, to_yaml
from jsddpm.config_doc import reference_markdown
from jsddpm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_then_overrides_take_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.002\n  batch_size: 4\nloss:\n  p: 2.5\n")
    cfg = load_config(f, ["train.lr=3e-4", "model.channel_mult=[1,2]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.batch_size == 4
    assert cfg.loss.p == 2.5
    assert list(cfg.model.channel_mult) == [1, 2]


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("train:\n  lrr: 0.1\n", "unknown config key 'train.lrr'"),
        ("nonsense: 1\n", "unknown config key 'nonsense'"),
        ("train:\n  batch_size: many\n", "'train.batch_size'"),
        ("diffusion:\n  prediction_type: eps\n", "diffusion.prediction_type=eps is not one of"),
        ("loss:\n  p: -1\n", "loss.p must be > 0"),
        ("train: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_naming_the_file_and_key(tmp_path, yaml_text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        load_config(f)
    msg = str(err.value)
    assert needle in msg and str(f) in msg and "\n" not in msg


def test_bad_override_names_the_key():
    with pytest.raises(UserError, match="unknown config key 'data.nope'"):
        load_config(None, ["data.nope=1"])
    with pytest.raises(UserError, match="expected key=value"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_presets_load_and_round_trip_through_plain_containers(preset):
    cfg = load_config(preset)
    again = from_container(to_container(cfg))
    assert to_yaml(again) == to_yaml(cfg)


def test_cli_reports_config_errors_as_one_line_exit_2(tmp_path, capsys):
    if "cache" not in COMMANDS:
        pytest.skip("no config-reading command")
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  imagesize: 64\n")
    code = main(["cache", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), "--config", str(f)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data.imagesize" in err[0]
    assert not (tmp_path / "o").exists()


def test_readme_configuration_reference_matches_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert reference_markdown() in readme, "README's configuration reference is stale: run `make docs`"


def test_help_is_fast_and_lists_every_stage():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "jsddpm.cli", "--help"], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t0 < 2.0
    for name in COMMANDS:
        assert name in out.stdout
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jsddpm.cli", name, "--help"], capture_output=True, check=True)
        assert time.perf_counter() - t0 < 2.0, f"jsddpm {name} --help is slow: import heavy modules lazily"


def test_section_overrides_set_every_key_back_including_nulls():
    from omegaconf import OmegaConf

    from jsddpm.config import section_overrides

    for given in ([], ["sample.min_fidelity=0.4", "sample.mask_augment=true", "sample.device=cuda:0,cuda:1"]):
        cfg = load_config(None, given)
        again = load_config(None, section_overrides(cfg, "sample", skip=("strength",)))
        assert OmegaConf.to_container(again.sample) == OmegaConf.to_container(cfg.sample)
    assert "sample.min_fidelity=null" in section_overrides(load_config(None, []), "sample")
