"""weft-mountd: the one privileged piece of WEFT OS (docs/mountd.md).

A root service, started by socket activation, that mounts signed `.wapp` app images for
weft-appd: it checks the footer signature against the trusted keys, the app id and the
rollback record, then activates dm-verity over the image through the kernel's loop and
device-mapper ioctls and mounts the EROFS read-only at /run/weft/apps/<app_id>. Modules:
`kernel` (the privileged seam), `loopdev`, `devmapper`, `syscalls` (what the seam calls),
`activation` (checks and ordered set-up/tear-down), `registry` (references and reconcile),
`server` (the socket), `client` (for appd), `cli`.
"""
