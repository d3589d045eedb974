"""Devices: the mesh over this process's devices and the processes of a run."""
