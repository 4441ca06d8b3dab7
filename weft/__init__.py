"""WEFT OS: verified app images, the app platform daemons and the OS image tooling."""
