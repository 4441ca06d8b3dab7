"""The OS image: building it with mkosi, reading its partitions, auditing and flashing it."""
