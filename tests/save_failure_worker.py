"""`python -m launch.train` whose checkpoint folder fails from the second save on
(run by tests/test_save_failures.py):

  python -m tests.save_failure_worker MODE --workdir=... --config...

MODE eperm: the folder takes no new entry (EPERM from mkdir, as `chattr +i` or a
read-only remount give); enospc: the disk reports no free space (statvfs);
takeover: during the second save another run (host 'other-node', pid 4242) takes
the workdir lock over, as when this run was suspended past the stale timeout.
"""

import errno
import json
import os
import sys

from absl import app


def main():
  mode = sys.argv.pop(1)
  from dllm_jax.training import save_guard  # pylint: disable=g-import-not-at-top
  from launch import cli, train  # pylint: disable=g-import-not-at-top
  real_save, real_mkdir, real_statvfs = (save_guard.GuardedManager.save, os.mkdir,
                                         os.statvfs)
  failing = []  # The checkpoint folder, once the fault is on.

  def inside(path) -> bool:
    return bool(failing) and os.path.abspath(os.fspath(path)).startswith(failing[0])

  def mkdir(path, *args, **kwargs):
    if mode == 'eperm' and inside(path):
      raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.fspath(path))
    return real_mkdir(path, *args, **kwargs)

  def statvfs(path):
    st = real_statvfs(path)
    if mode == 'enospc' and inside(path):
      return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0,
                                st.f_files, st.f_ffree, st.f_favail, st.f_flag,
                                st.f_namemax))
    return st

  def save(self, step, *args, **kwargs):
    self.wait_until_finished()  # The first save completes untouched.
    if self._committed_steps():  # pylint: disable=protected-access
      failing[:] = [os.fspath(self.directory)]
      if mode == 'takeover':
        lock = os.path.join(os.path.dirname(os.fspath(self.directory)), '.dllm_lock')
        with open(lock, 'w') as f:
          json.dump({'host': 'other-node', 'pid': 4242, 'pid_ns': 'pid:[1]',
                     'started': '2026-12-05T00:00:00+00:00'}, f)
    return real_save(self, step, *args, **kwargs)

  os.mkdir, os.statvfs, save_guard.GuardedManager.save = mkdir, statvfs, save
  app.run(train.main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
