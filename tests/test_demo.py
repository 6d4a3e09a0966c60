"""The README's main job (`python -m llava_manager`) runs and tells the truth about what it did."""

from llava_manager.__main__ import main


def test_demo_runs_and_reports(capsys):
    main(["--interval", "2", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert "managers before decoder layers [0, 2, 4, 6]" in out
    assert "managers 384 (= 4 x 3 x 32)" in out
    assert "same tokens as the base model: True" in out
    assert "after remove_manager, same tokens as the base model: True" in out
