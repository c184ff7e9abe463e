"""raygap.removal: every removal raygap makes (prepare's frame folders and temp files, the
tensor cache, the ledger, temp folders, checkpoints) removes only what is strictly inside the
folder raygap made for it; on real folders and real symlinks (issue 25: a clip id of ``..``
made prepare remove the whole OUT folder)."""
from __future__ import annotations

import pytest

from raygap.errors import StoreError
from raygap.removal import RefusedRemoval, remove, temp_folder


def tree(tmp_path):
    made = tmp_path / "made"
    (made / "sub").mkdir(parents=True)
    (made / "sub" / "f.txt").write_text("raygap's")
    (made / "file.txt").write_text("raygap's")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("a user's file")
    return made, outside


def test_removes_files_and_folders_strictly_inside(tmp_path):
    made, _ = tree(tmp_path)
    assert remove(made / "file.txt", made) is True and not (made / "file.txt").exists()
    assert remove(made / "sub", made) is True and not (made / "sub").exists()
    assert remove(made / "sub", made) is False                   # nothing there: nothing removed
    assert made.is_dir()


@pytest.mark.parametrize("rel", ["", ".", "..", "sub/..", "sub/../..", "../outside", "../outside/precious.txt"])
def test_refuses_the_folder_itself_and_anything_outside_it(rel, tmp_path):
    made, outside = tree(tmp_path)
    target = made / rel if rel else made
    with pytest.raises(RefusedRemoval, match="is not strictly inside"):
        remove(target, made)
    with pytest.raises(RefusedRemoval):                         # ignore_errors never hides a refusal
        remove(target, made, ignore_errors=True)
    assert (made / "sub" / "f.txt").read_text() == "raygap's" and (outside / "precious.txt").exists()
    assert issubclass(RefusedRemoval, StoreError)                # one line, exit 2 in the CLI


def test_a_symlinked_folder_on_the_way_out_is_refused(tmp_path):
    made, outside = tree(tmp_path)
    (made / "link").symlink_to(outside)                            # made/link -> outside
    with pytest.raises(RefusedRemoval, match="leads out of .* through a symlink"):
        remove(made / "link" / "precious.txt", made)
    assert (outside / "precious.txt").read_text() == "a user's file"


def test_a_symlink_itself_is_removed_as_a_link_never_followed(tmp_path):
    made, outside = tree(tmp_path)
    (made / "to_dir").symlink_to(outside)
    (made / "to_file").symlink_to(outside / "precious.txt")
    assert remove(made / "to_dir", made) and remove(made / "to_file", made)
    assert not (made / "to_dir").is_symlink() and not (made / "to_file").is_symlink()
    assert (outside / "precious.txt").read_text() == "a user's file"


def test_links_inside_a_removed_folder_are_not_followed(tmp_path):
    made, outside = tree(tmp_path)
    (made / "sub" / "out").symlink_to(outside)
    assert remove(made / "sub", made)
    assert (outside / "precious.txt").read_text() == "a user's file"


def test_a_folder_made_through_a_link_may_be_used_when_the_link_stays_inside(tmp_path):
    made, _ = tree(tmp_path)
    (made / "alias").symlink_to(made / "sub")                       # a link inside the folder, to inside it
    assert remove(made / "alias" / "f.txt", made) and not (made / "sub" / "f.txt").exists()
    root_link = tmp_path / "made_link"                              # the folder itself reached through a link
    root_link.symlink_to(made)
    assert remove(root_link / "file.txt", root_link) and not (made / "file.txt").exists()


def test_temp_folder_is_removed_at_the_end(tmp_path):
    with temp_folder("raygap-test-") as folder:
        (tmp_path / "marker").write_text("x")
        open(f"{folder}/x", "w").close()
    import os
    assert not os.path.exists(folder)


def test_prepare_never_removes_out_through_a_dotdot_id(tmp_path):
    # the frames job of a clip whose folder would be OUT itself refuses (the loader also refuses the id first)
    from raygap.data.prepare.jobs import extract_frames
    out = tmp_path / "out"
    (out / "Image-01-FPS-SE").mkdir(parents=True)
    (out / "keep.txt").write_text("a user's file")
    fake = tmp_path / "ffmpeg"                     # writes one frame where it is told to
    fake.write_text('#!/bin/sh\nfor a; do last="$a"; done\n: > "$(dirname "$last")/00001.jpg"\n')
    fake.chmod(0o755)
    with pytest.raises(RefusedRemoval, match="is not strictly inside"):
        extract_frames(str(fake), tmp_path / "v.mp4", out / "Image-01-FPS-SE" / "..")
    assert (out / "keep.txt").read_text() == "a user's file"
