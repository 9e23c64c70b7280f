"""flows.ls_server: the local data dir is private (the served modes are checked in test_ls_pull)."""

from __future__ import annotations

import json
import os
import stat

from flows.ls_server import LocalServer


def _mode(path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_data_dir_and_its_credentials_are_owner_only(tmp_path):
    server = LocalServer(tmp_path / "lab" / ".ls-data")
    creds = server.credentials(create=True)
    assert _mode(server.data_dir) == 0o700 and _mode(server.data_dir / "credentials.json") == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    assert _mode(tmp_path / "lab") == 0o777 & ~umask                          # parents outside: the usual mode
    assert json.loads((server.data_dir / "credentials.json").read_text()) == creds
    assert server.make_private() is None                                     # nothing to fix


def test_a_data_dir_open_to_other_users_is_made_owner_only_with_one_line(tmp_path):
    data = tmp_path / ".ls-data"
    (data / "server" / "media").mkdir(parents=True)
    db = data / "server" / "label_studio.sqlite3"
    db.write_text("authtoken_token ...")
    for path, mode in ((data, 0o755), (data / "server", 0o755), (data / "server" / "media", 0o775), (db, 0o644)):
        os.chmod(path, mode)
    (data / "link").symlink_to(db)

    line = LocalServer(data).make_private()
    assert line is not None and "\n" not in line
    assert f"{data} was open to other users (mode 0755; 4 path(s) in all)" in line
    assert f"chmod -R go-rwx {data}" in line and "API token" in line
    assert (_mode(data), _mode(data / "server"), _mode(data / "server" / "media"), _mode(db)) == (
        0o700, 0o700, 0o700, 0o600)
    assert LocalServer(data).make_private() is None
