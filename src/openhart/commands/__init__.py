"""The commands of `openhart`, one module each over the pipeline and the libraries; `openhart.cli`
gathers them and turns their errors into exit codes. Shared arguments, the request loop of the
commands that write images, and the usage error are in `common`; numeric argument types in `ranges`."""
