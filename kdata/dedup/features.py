"""The per-sample features exact and near dedup compare: a hash of the decoded payload and, for
images, a small pixel embedding made for copy detection (16×16 grayscale, box filter,
mean-centred, L2-normalised; imagededup/fastdup style), computed once per pool unit and cached
(``unit_features``)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from kdata.dedup.text import text_hash

PIXEL_SIZE = 16


def image_features(data: bytes | None, *, size: int = PIXEL_SIZE, pixels: bool = True) -> tuple[str, np.ndarray | None]:
    """(hash of the decoded pixels, near-dup pixel embedding or None) of one image.

    The hash covers mode, size and raw pixels (full depth, upright: the EXIF orientation applied), so
    the same picture saved twice (different PNG settings or metadata) hashes the same. The embedding
    is the image as scoring sees it (``kdata.models.images.upright_8bit``: upright, 16-bit greys
    scaled) at ``size``×``size`` grayscale (box filter), mean-centred and L2-normalised, so brightness
    offsets, light noise and lossy re-encoding barely move it. Undecodable payloads hash their bytes
    and get a zero vector.
    """
    from PIL import Image

    from kdata.models.pixels import open_image, upright_8bit

    try:
        with open_image(data) as stored:
            stored.load()
            im = upright_8bit(stored)  # as scoring sees it: upright, 16-bit greys scaled (not clipped)
            h = hashlib.sha256(f"{stored.mode}:{im.size}:".encode() + _hashed(stored, im).tobytes()).hexdigest()
            if not pixels:
                return h, None
            small = im.convert("L").resize((size, size), Image.BOX)
        v = np.asarray(small, dtype=np.float32).reshape(-1)
        v = v - v.mean()
        n = float(np.linalg.norm(v))
        return h, (v / n if n > 0 else v)
    except Exception:
        h = hashlib.sha256(b"raw:" + (data or b"")).hexdigest()
        return h, (np.zeros(size * size, np.float32) if pixels else None)


def _hashed(stored, im):
    """The pixels exact dedup hashes: ``stored`` upright at its full depth (``im`` is ``stored`` made
    upright and 8-bit; a 16-bit image keeps its low bytes in the hash)."""
    from PIL import ImageOps

    return im if im.mode == stored.mode else ImageOps.exif_transpose(stored)


def text_features(text: str | None) -> str:
    """Exact-dedup hash of a text: NFKC, case folded, whitespace collapsed (``kdata.dedup.text``)."""
    return text_hash(text)


def payload_features(table, *, pixels: bool) -> tuple[list[str], np.ndarray | None]:
    """Hashes (and pixel embeddings) of a pool/shard table's payloads, row-aligned."""
    n = table.num_rows
    images = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * n
    hashes, vecs = [], []
    for img, txt in zip(images, texts):
        if img is None:
            hashes.append(text_features(txt))
            vecs.append(np.zeros(PIXEL_SIZE * PIXEL_SIZE, np.float32))
        else:
            h, v = image_features(img, pixels=pixels)
            hashes.append(h)
            vecs.append(v)
    if not pixels:
        return hashes, None
    return hashes, (np.stack(vecs) if vecs else np.zeros((0, PIXEL_SIZE * PIXEL_SIZE), np.float32))


FEATURES_VERSION = 3  # bump when image_features / payload_features change what they compute (2: upright, 16-bit; 3: formats)


def unit_features(unit, *, pixels: bool):
    """``sample_id``, ``hash`` (and ``pixels``, the near-dup embedding) of every row of a pool unit,
    cached per unit content and name in ``$KDATA_CACHE/dedup-features``: decoding every image again is
    most of a rerun's time once its scores are cached. Unwritable cache: computed, not kept.

    An entry is ``<key>.parquet`` and, written after it, ``<key>.json`` recording the file's rows,
    size and CRC-32 (``kdata.scoring.cache_entries``). One that does not match is a miss: dropped
    under the entry's lock with a warning line naming the file, computed again and rewritten."""
    from kdata.core.errors import KdataError
    from kdata.core.lock import acquire
    from kdata.core.paths import cache_dir
    from kdata.scoring.cache_entries import write_entry

    key = json.dumps([FEATURES_VERSION, unit.fingerprint(), unit.name, bool(pixels), PIXEL_SIZE])
    try:
        path = cache_dir("dedup-features") / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.parquet"
    except OSError:
        return _unit_features(unit, pixels)
    marker = path.with_suffix(".json")
    table = _cached_features(path, marker, pixels)
    if table is not None:
        return table
    try:
        lock = acquire(path, wait=True)
    except KdataError:  # read-only cache
        return _unit_features(unit, pixels)
    try:
        table = _cached_features(path, marker, pixels, lock=lock)
        if table is not None:
            return table
        table = _unit_features(unit, pixels)
        try:
            write_entry(path, marker, table, {"unit": unit.name})
        except OSError:
            pass
        return table
    finally:
        lock.release()


def _cached_features(path, marker, pixels: bool, *, lock=None):
    """The cached features table, or None on a miss; with the entry's ``lock`` held, a damaged entry
    (``DamagedEntry``) is also dropped with a warning line."""
    from kdata.core.cache_admin import touch_used
    from kdata.scoring.cache_entries import DamagedEntry, check_parquet, drop_entry, read_marker, warn_dropped

    try:
        fields = read_marker(marker)
        if fields is None:
            return None  # no entry, or one a killed run left unfinished: computed and written again
        table = check_parquet(path, fields, lambda schema: _check_schema(schema, pixels, path), read=True)
        touch_used(marker)  # `kdata cache prune` removes entries by last use
        return table
    except DamagedEntry as damage:
        if lock is not None:
            drop_entry(lock, path, marker)
            warn_dropped(damage, "dedup feature cache entry")
        return None


def _check_schema(schema, pixels: bool, path) -> None:
    import pyarrow as pa

    from kdata.scoring.cache_entries import DamagedEntry

    want = {"sample_id": pa.string(), "hash": pa.string()}
    if pixels:
        want["pixels"] = pa.list_(pa.float32(), PIXEL_SIZE * PIXEL_SIZE)
    got = {f.name: f.type for f in schema}
    if list(got) != list(want) or any(not got[k].equals(t) for k, t in want.items()):
        raise DamagedEntry(path, f"has columns {schema.names} of types {[str(t) for t in got.values()]}, "
                                 f"expected {list(want)}")


def _unit_features(unit, pixels: bool):
    import pyarrow as pa

    t = unit.read()
    h, v = payload_features(t, pixels=pixels)
    cols = {"sample_id": t.column("sample_id").cast(pa.string()), "hash": pa.array(h, pa.string())}
    if pixels:
        cols["pixels"] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float32()),
                                                           PIXEL_SIZE * PIXEL_SIZE)
    return pa.table(cols)


def pool_features(pool, ids: np.ndarray, *, pixels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Hashes and pixel embeddings for ``ids``, unit by unit over the pool (``unit_features``, cached;
    memory: only the small per-sample features are kept, never the payloads of more than one unit)."""
    from kdata.core.ids import member_mask

    ids = np.asarray(ids, dtype=object)
    pos_of = {s: i for i, s in enumerate(ids.tolist())}
    hashes = np.full(len(ids), None, dtype=object)
    vecs = np.zeros((len(ids), PIXEL_SIZE * PIXEL_SIZE), np.float32) if pixels else None
    for unit in pool.units:
        t = unit_features(unit, pixels=pixels)
        t = t.filter(member_mask(t.column("sample_id"), pos_of))
        if not t.num_rows:
            continue
        where = np.array([pos_of[s] for s in t.column("sample_id").to_pylist()], dtype=np.int64)
        hashes[where] = t.column("hash").to_pylist()
        if pixels:
            flat = t.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vecs[where] = flat.reshape(-1, PIXEL_SIZE * PIXEL_SIZE)
    missing = int(sum(h is None for h in hashes))
    if missing:
        raise RuntimeError(f"dedup: {missing} candidates not found in the pool")
    return hashes, vecs


