"""Safe extraction: hand-crafted hostile archives, each refused with its reason and nothing left behind."""
import gzip
import io
import os
import stat
import tarfile
import warnings
import zipfile

import pytest

from storage.archives import ArchiveRefused, ExtractLimits, extract_archive


def _zip(path, members, attrs=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are on purpose in one case
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                if attrs and name in attrs:
                    info.external_attr = attrs[name] << 16
                zf.writestr(info, data)
    return path


def _tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _ti(name, kind=tarfile.REGTYPE, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname = kind, size, linkname
    return ti


def _refused(tmp_path, archive, reason, limits=ExtractLimits()):
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    before = set(os.listdir(tmp_path))
    with pytest.raises(ArchiveRefused) as err:
        extract_archive(archive, root / "ds", limits)
    assert err.value.reason == reason, str(err.value)
    assert os.listdir(root) == []  # nothing behind: no target, no temporary folder
    assert set(os.listdir(tmp_path)) == before  # and nothing written beside the data root
    assert not (tmp_path / "evil.txt").exists()
    return str(err.value)


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/evil.txt", "C:/evil.txt", "a\\..\\evil.txt"])
def test_paths_outside_the_target_are_refused(tmp_path, name):
    msg = _refused(tmp_path, _zip(tmp_path / "a.zip", [("ok.txt", b"1"), (name, b"x")]), "unsafe_path")
    assert repr(name) in msg or name in msg


def test_tar_traversal_is_refused(tmp_path):
    _refused(tmp_path, _tar(tmp_path / "a.tar", [(_ti("../evil.txt", size=1), b"x")]), "unsafe_path")


def test_zip_symlink_is_refused(tmp_path):
    arc = _zip(tmp_path / "a.zip", [("link", b"/etc/passwd")], {"link": stat.S_IFLNK | 0o777})
    _refused(tmp_path, arc, "link")


@pytest.mark.parametrize("kind, reason", [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link"),
                                          (tarfile.CHRTYPE, "special_file"), (tarfile.BLKTYPE, "special_file"),
                                          (tarfile.FIFOTYPE, "special_file")])
def test_tar_links_and_devices_are_refused(tmp_path, kind, reason):
    arc = _tar(tmp_path / "a.tar.gz", [(_ti("ok.txt", size=1), b"1"), (_ti("x", kind, linkname="/etc/passwd"), None)],
               "w:gz")
    _refused(tmp_path, arc, reason)


def test_zip_bomb_is_refused_by_ratio(tmp_path):
    _refused(tmp_path, _zip(tmp_path / "a.zip", [("zeros.bin", b"\0" * (20 * 2**20))]), "compression_ratio")


def test_gzip_bomb_is_refused_by_ratio(tmp_path):
    _refused(tmp_path, _tar(tmp_path / "a.tgz", [(_ti("zeros.bin", size=20 * 2**20), b"\0" * (20 * 2**20))], "w:gz"),
             "compression_ratio")


def test_total_size_is_counted_while_extracting(tmp_path):
    arc = _zip(tmp_path / "a.zip", [(f"f{i}.bin", os.urandom(4000)) for i in range(3)])
    _refused(tmp_path, arc, "too_large", ExtractLimits(max_total_bytes=10_000))


def test_member_count_is_capped(tmp_path):
    arc = _zip(tmp_path / "a.zip", [(f"f{i}.txt", b"x") for i in range(5)])
    _refused(tmp_path, arc, "too_many_members", ExtractLimits(max_members=3))


def test_nested_archives_are_refused_by_name_and_by_content(tmp_path):
    inner = _zip(tmp_path / "inner.zip", [("a.txt", b"1")]).read_bytes()
    _refused(tmp_path, _zip(tmp_path / "a.zip", [("inner.zip", inner)]), "nested_archive")
    _refused(tmp_path, _zip(tmp_path / "b.zip", [("innocent.png", gzip.compress(b"hello"))]), "nested_archive")


def test_duplicate_member_cannot_overwrite(tmp_path):
    _refused(tmp_path, _zip(tmp_path / "a.zip", [("a.txt", b"1"), ("a.txt", b"2")]), "duplicate_member")


def test_not_an_archive_and_empty_archives(tmp_path):
    (tmp_path / "junk.zip").write_bytes(os.urandom(2000))
    _refused(tmp_path, tmp_path / "junk.zip", "unsupported_archive")
    _refused(tmp_path, _zip(tmp_path / "e.zip", [("dir/", b"")]), "empty_archive")


def test_truncated_archive_is_refused(tmp_path):
    good = _tar(tmp_path / "a.tar.gz", [(_ti("f.bin", size=100_000), os.urandom(100_000))], "w:gz")
    (tmp_path / "t.tar.gz").write_bytes(good.read_bytes()[:50_000])
    _refused(tmp_path, tmp_path / "t.tar.gz", "corrupt_archive")


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_a_clean_camvid_subset_extracts(tmp_path, camvid_dir, fmt):
    files = sorted((camvid_dir / "train").glob("*.jpg"))[:2]
    members = [(f"camvid/train/{p.name}", p.read_bytes()) for p in files]
    members += [(f"camvid/trainannot/{p.stem}.png", (camvid_dir / "trainannot" / f"{p.stem}.png").read_bytes()) for p in files]
    # the client's file name is irrelevant: the kind comes from the content
    if fmt == "zip":
        arc = _zip(tmp_path / "upload.bin", members)
    else:
        arc = _tar(tmp_path / "upload.bin", [(_ti(n, size=len(d)), d) for n, d in members],
                   "w:gz" if fmt == "tar.gz" else "w")
    res = extract_archive(arc, tmp_path / "data" / "ds")
    assert res.kind == fmt and res.files == 4
    assert (tmp_path / "data" / "ds" / "camvid" / "train" / files[0].name).read_bytes() == files[0].read_bytes()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ds"]


def test_one_member_bomb_among_incompressible_members_is_refused(tmp_path):
    """The whole archive's ratio passes (incompressible members dilute it); one member's does not."""
    for kind in ("zip", "tar.gz"):
        arc = tmp_path / f"bomb.{kind}"
        members = {"d/noise1.bin": os.urandom(400_000), "d/noise2.bin": os.urandom(400_000),
                   "d/bomb.bin": bytes(40 * 2**20)}
        if kind == "zip":
            with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        else:
            with tarfile.open(arc, "w:gz") as tf:
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        assert sum(map(len, members.values())) / arc.stat().st_size < 200
        exc = _refused(tmp_path, arc, "compression_ratio")
        assert "bomb.bin" in str(exc)
        # a looser per-member limit lets the same archive through
        extract_archive(arc, tmp_path / f"ok-{kind}", ExtractLimits(max_member_ratio=5000))
