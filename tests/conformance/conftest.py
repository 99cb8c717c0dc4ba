from .golden import MAX_ERRORS


def pytest_terminal_summary(terminalreporter):
    if not MAX_ERRORS:
        return
    terminalreporter.section("conformance: max abs error per tensor group")
    for case, groups in MAX_ERRORS.items():
        for group, error in sorted(groups.items()):
            terminalreporter.write_line(f"{case:>16}  {group:<28} {error:.3g}")
