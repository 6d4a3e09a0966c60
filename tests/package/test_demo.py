"""The README's main job (`python -m llava_manager`) runs and tells the truth about what it did."""

from llava_manager.__main__ import main


def test_demo_runs_and_reports(capsys):
    main(["--interval", "2", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert "managers before decoder layers [0, 2, 4, 6]" in out
    assert "managers 384 (= 4 x 3 x 32)" in out
    assert "same tokens as the base model: True" in out
    assert "after remove_manager, same tokens as the base model: True" in out


def test_demo_runs_for_every_family(capsys):
    for family, title in (
        ("llava", "LLaVA-1.5"),
        ("llava_next", "LLaVA-NeXT"),
        ("llava_next_video", "LLaVA-NeXT-Video"),
    ):
        main(["--family", family, "--max-new-tokens", "3"])
        out = capsys.readouterr().out
        assert f"model: {title} tiny" in out and "managers before decoder layers [0, 4]" in out
        assert "same tokens as the base model: True" in out
        assert "after remove_manager, same tokens as the base model: True" in out
        assert ("video tokens" in out) == (family == "llava_next_video")
