import json

import pytest
from PIL import Image

from openhart.cli import main
from openhart.data.emoji import caption, emoji_entries, find_font, write_emoji_dataset


@pytest.mark.parametrize("name,text", [
    (":red_apple:", "red apple"),
    (":woman_artist_dark_skin_tone:", "woman artist: dark skin tone"),
    (":waving_hand_medium-light_skin_tone:", "waving hand: medium-light skin tone"),
    (":people_holding_hands_light_skin_tone_dark_skin_tone:", "people holding hands: light skin tone, dark skin tone"),
    (":man_medium_skin_tone_beard:", "man: medium skin tone, beard"),
    (":woman_red_hair:", "woman: red hair"),
    (":keycap_#:", "keycap: #"),
])
def test_captions_are_natural_text(name, text):
    assert caption(name) == text


def test_flags_are_named_as_flags():
    entries = dict(emoji_entries())
    assert entries["🇯🇵"] == "flag: Japan" and entries["🍎"] == "red apple"
    assert len(entries) > 3500


def test_emoji_dataset_renders_captions_and_a_fixed_held_out_split(tmp_path):
    counts = write_emoji_dataset(tmp_path / "a", limit=60, seed=3)
    assert counts["train"] + counts["heldout"] + counts["skipped"] == 60 and counts["heldout"] == 6
    rows = [json.loads(line) for line in (tmp_path / "a" / "train" / "metadata.jsonl").read_text().splitlines()]
    image = Image.open(tmp_path / "a" / "train" / rows[0]["file_name"])
    assert image.size == (128, 128) and image.mode == "RGB"
    assert len(image.getcolors(maxcolors=100_000)) > 10  # a colour glyph, not a blank square
    again = write_emoji_dataset(tmp_path / "b", limit=60, seed=3)
    held = lambda d: sorted((d / "heldout" / "metadata.jsonl").read_text().splitlines())  # noqa: E731
    assert again == counts and held(tmp_path / "a") == held(tmp_path / "b")
    write_emoji_dataset(tmp_path / "c", limit=60, seed=4)
    assert held(tmp_path / "a") != held(tmp_path / "c")


def test_a_missing_font_says_how_to_install_it(tmp_path, capsys):
    assert main(["data", "emoji", str(tmp_path / "out"), "--font", str(tmp_path / "none.ttf")]) == 2
    assert "apt-get install fonts-noto-color-emoji" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert find_font().name == "NotoColorEmoji.ttf"  # the test suite installs it (scripts/system-deps.sh)
