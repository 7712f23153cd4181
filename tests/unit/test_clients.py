from __future__ import annotations

from dario.daemon.recording.clients import FamilyCache


def test_family_cache_is_bounded_by_bytes_not_only_by_count() -> None:
    cache = FamilyCache()
    for i in range(1100):  # 1,100 distinct 60 KB User-Agents once grew RSS by ~60 MB for good
        ua = f"tool{i}/1.0 ".encode() + b"x" * 60_000
        assert cache.family(ua) == f"tool{i}"
    assert cache.key_bytes <= FamilyCache.MAX_ENTRIES * FamilyCache.MAX_KEY
    assert cache.key_bytes < 1024 * 1024
    # Ordinary agents are still remembered.
    assert cache.family(b"anthropic/python 0.40.0") == "anthropic-python"
    assert cache.family(b"curl/8.5.0") == "curl"
    # The cache was full of the long ones: new agents are worked out, not remembered.
    assert len(cache) == FamilyCache.MAX_ENTRIES
