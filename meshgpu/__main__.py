"""``python -m meshgpu ...``: the same command line as the ``meshgpu`` script."""

from meshgpu.cli import main

if __name__ == "__main__":
    main(prog_name="meshgpu")
