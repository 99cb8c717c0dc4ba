"""The commands of `openhart`, one module each over the pipeline and the libraries; `openhart.cli`
gathers them (with `train`, `eval` and `serve`, which live beside their subsystems) and turns
their errors into exit codes. Shared arguments and errors are in `common`."""
