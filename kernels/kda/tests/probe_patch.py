# Shared by the clock-probe scripts (phase_clocks.py, scan_clocks.py), which patch a staged copy of kda.cu and the
# harness, never a checkout's own files.


def patch(path, edits):
    """Replaces each (old, new) of edits in the file; every old must occur exactly once (an assertion names it)."""
    s = open(path).read()
    for old, new in edits:
        assert s.count(old) == 1, (path, old)
        s = s.replace(old, new)
    open(path, 'w').write(s)


def add_harness_mode(harness, flag, var, print_name, print_source):
    """Gives the harness a mode `flag` (e.g. --scan-clocks): --profile's launches, then print_name(), whose C++
    definition print_source is placed before main."""
    patch(harness, [
        ('\nint main(int argc, char** argv) {', '\n' + print_source.strip('\n') + '\n\nint main(int argc, char** argv) {'),
        ('        else if (a == "--profile") profile = true;',
         '        else if (a == "--profile") profile = true;\n        else if (a == "%s") %s = true;' % (flag, var)),
        ('    bool bench = false, quick = false, profile = false,',
         '    bool %s = false;\n    bool bench = false, quick = false, profile = false,' % var),
        ('    if (profile) { g_decode_blocks', '    profile = profile || %s;\n    if (profile) { g_decode_blocks' % var),
        ('profile_once(); return 0; }', 'profile_once(); if (%s) %s(); return 0; }' % (var, print_name)),
    ])
