"""Settings every property test in the suite shares."""

from hypothesis import settings

# A property is judged by what it finds, never by how long an example took:
# on a loaded 2-core machine one example can take longer than Hypothesis's
# default 200 ms deadline, and the test then fails for the machine, not the
# code. print_blob keeps the line that replays a failure.
settings.register_profile("meshgpu", deadline=None, print_blob=True)
settings.load_profile("meshgpu")
