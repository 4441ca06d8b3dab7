"""Booting the OS image in QEMU: accelerator detection, the command line, a QMP-driven machine."""
