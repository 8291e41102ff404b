"""The README documents every setting and opens with the newcomer's two commands."""

from pathlib import Path

from pulse.config import SETTINGS, TABLE

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_in_the_configuration_table():
    table = [line for line in README.splitlines() if line.startswith("| `PULSE_")]
    documented = {line.split("`")[1] for line in table}
    assert set(SETTINGS) <= documented, sorted(set(SETTINGS) - documented)
    assert documented <= set(SETTINGS), sorted(documented - set(SETTINGS))


def test_the_configuration_table_gives_each_default():
    rows = [line for line in README.splitlines() if line.startswith("| `PULSE_")]
    cells = {row.split("`")[1]: row.split("|")[2].replace("`", "") for row in rows}
    wrong = {setting.name: setting.default_text() for setting in TABLE
             if setting.default_text() not in cells.get(setting.name, "")}
    assert not wrong, wrong


def test_readme_opens_with_make_run_and_make_test():
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip() and not line.startswith("sh")]
    assert commands == ["make run", "make test"]
