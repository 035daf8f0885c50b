"""The project's skeleton stays true: CI runs the README's test command, flash-attn stays optional."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == "python3 tools/start.py test" and ci[-1].strip() in commands  # the README's second
    start = (ROOT / "tools" / "start.py").read_text()
    assert '"-m", "pytest", "-q")' in start and '"ruff", "check"' in start  # and it lints, then runs the suite


def test_requirements_are_cpu_installable():
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert "torch==2.13.0" in reqs  # a bare "torch" pulls several GB of CUDA packages
    assert not any(r.startswith(("flash-attn", "flash_attn")) for r in reqs)


def test_readme_cpu_configuration_is_valid():
    """The README's CPU command parses into the hyperparameter class: the documented overrides stay real."""
    import train_gpt as tg

    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) if "python3 train_gpt.py" in b)
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", block))
    hp = tg.Hyperparameters(env)
    assert env == {"PRESET": "cpu"} and hp.data_path == "./data/datasets/sample_caseops_sp8192"
    assert hp.vocab_size == 8192 and hp.cpu_bf16 and hp.logit_softcap == 0  # the flagship's data; README's trials
    assert hp.smear_gate and hp.sparse_attn_gate and hp.xsa_last_n == hp.num_layers == 4
    assert hp.num_loops == 0 and hp.parallel_start_layer == hp.num_layers  # left out at this scale (README)
    assert tg.grad_accum_steps(hp, 1) == 1


def test_readme_lists_every_environment_variable():
    """The README's table is the one generated from HPARAMS: a knob added, renamed or re-defaulted without
    regenerating it fails here."""
    import train_gpt as tg
    from tools import env_table

    readme = (ROOT / "README.md").read_text()
    assert env_table.with_table(readme) == readme
    for name, _, default, _, meaning in tg.HPARAMS:
        shown = re.escape(f"`{default}`" if default != "" else "(empty)")
        row = rf"^\| `{name}` \| {shown} \| .+ \| {re.escape(meaning.replace('|', '/'))} \|$"
        assert re.search(row, readme, re.M), name


def test_the_packed_program_keeps_every_knob_but_not_its_meaning():
    """tools/pack.py drops documentation only: the knob tables keep names, types, defaults and ranges."""
    import train_gpt as tg
    from tools import pack

    packed = {}
    exec(compile(pack.stripped((ROOT / "train_gpt.py").read_text()), "train_gpt.py", "exec"), packed)
    assert [row[:4] for row in packed["HPARAMS"]] == [row[:4] for row in tg.HPARAMS]
    assert {row[4] for row in packed["HPARAMS"]} == {""} and packed["MODEL_HPARAMS"] == tg.MODEL_HPARAMS
