"""The per-sample features exact and near dedup compare: a hash of the decoded payload and, for
images, a small pixel embedding made for copy detection (16×16 grayscale, box filter,
mean-centred, L2-normalised; imagededup/fastdup style), computed once per pool unit and cached
(``unit_features``). Images over ``--max-pixels`` (``max_pixels``, checked on the header as scoring does)
are never decoded: they hash their bytes and get a zero vector, like undecodable payloads."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from kdata.dedup.text import text_hash
from kdata.models.pixels import DEFAULT_MAX_PIXELS

PIXEL_SIZE = 16


def image_features(data: bytes | None, *, size: int = PIXEL_SIZE, pixels: bool = True,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[str, np.ndarray | None]:
    """(hash of the decoded pixels, near-dup pixel embedding or None) of one image.

    The hash covers mode, size and raw pixels (full depth, upright: the EXIF orientation applied), so
    the same picture saved twice (different PNG settings or metadata) hashes the same. The embedding
    is the image as scoring sees it (``kdata.models.images.upright_8bit``: upright, 16-bit greys
    scaled) at ``size``×``size`` grayscale (box filter), mean-centred and L2-normalised, so brightness
    offsets, light noise and lossy re-encoding barely move it. Undecodable payloads, and images over
    ``max_pixels`` (``--max-pixels``, read from the header: never decoded, ``open_capped``), hash
    their bytes and get a zero vector, which is near no other.
    """
    from PIL import Image

    from kdata.models.pixels import open_capped, upright_8bit

    try:
        with open_capped(data, max_pixels) as stored:
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


def payload_features(table, *, pixels: bool, max_pixels: int | None = DEFAULT_MAX_PIXELS
                     ) -> tuple[list[str], np.ndarray | None]:
    """Hashes (and pixel embeddings) of a pool/shard table's payloads, row-aligned (``image_features``)."""
    n = table.num_rows
    images = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * n
    hashes = []
    vecs = np.zeros((n, PIXEL_SIZE * PIXEL_SIZE), np.float32) if pixels else None
    for r, (img, txt) in enumerate(zip(images, texts)):
        if img is None:
            hashes.append(text_hash(txt))
        else:
            h, v = image_features(img, pixels=pixels, max_pixels=max_pixels)
            hashes.append(h)
            if pixels:
                vecs[r] = v
    return hashes, vecs


def file_features(paths, *, pixels: bool, at: np.ndarray | None = None, workers=0,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[list[str], np.ndarray | None]:
    """``payload_features`` of every row of the Parquet files ``paths`` (a dataset's shards), read a
    row group at a time and only the ``image``/``text`` columns, so memory holds the features
    (~1 KB a row with pixels) and one row group's payloads per worker, never the files'. Row ``r`` in
    file order (rows numbered across the files) lands at ``at[r]`` (default: ``r``). ``workers``: a
    count, ``auto`` or open ``FeatureWorkers`` (``kdata.dedup.feature_workers``); each task is one
    (file, row group), results in order, so the features do not depend on it."""
    import pyarrow.parquet as pq

    from kdata.dedup.feature_workers import feature_workers

    metas = [pq.read_metadata(p) for p in paths]
    n = sum(m.num_rows for m in metas)
    at = np.arange(n) if at is None else np.asarray(at, dtype=np.int64)
    hashes: list = [None] * n
    vecs = np.zeros((n, PIXEL_SIZE * PIXEL_SIZE), np.float32) if pixels else None
    done = 0
    tasks = ((str(p), g, pixels, max_pixels) for p, m in zip(paths, metas) for g in range(m.num_row_groups))
    with feature_workers(workers, rows=n) as fw:
        for h, v in fw.map(row_group_features, tasks):
            where = at[done:done + len(h)]
            for i, x in zip(where.tolist(), h):
                hashes[i] = x
            if pixels:
                vecs[where] = v
            done += len(h)
    return hashes, vecs


def row_group_features(task: tuple) -> tuple[list[str], np.ndarray | None]:
    """``payload_features`` of row group ``g`` of shard ``path`` (``task``: path, g, pixels[, max_pixels]),
    reading only its ``image``/``text`` columns; run by a feature worker (or in-process)."""
    import pyarrow.parquet as pq

    path, g, pixels, *cap = task
    f = pq.ParquetFile(path)
    cols = [c for c in ("image", "text") if c in f.schema_arrow.names]
    return payload_features(f.read_row_group(g, columns=cols), pixels=pixels, max_pixels=_cap(cap))


def _cap(rest: list) -> int | None:
    """A task's optional last item, ``max_pixels`` (the default when absent)."""
    return rest[0] if rest else DEFAULT_MAX_PIXELS


# bump when image_features / payload_features change what they compute (2: upright, 16-bit; 3: formats; 4: pixel cap)
FEATURES_VERSION = 4


def unit_features(unit, *, pixels: bool, wanted=None, workers=0, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """``sample_id``, ``hash`` (and ``pixels``, the near-dup embedding) of every row of a pool unit,
    cached per unit content and name in ``$KDATA_CACHE/dedup-features``: decoding every image again is
    most of a rerun's time once its scores are cached. Unwritable cache: computed, not kept. With
    ``wanted`` (a set or dict of ids), a unit that is not cached and holds none of them is neither
    read nor computed (an empty table comes back). ``workers``: a count, ``auto`` or the run's open
    ``FeatureWorkers`` computing the rows (``_unit_features``). ``max_pixels`` (``--max-pixels``, part of
    the key): images over it are not decoded.

    An entry is ``<key>.parquet`` and, written after it, ``<key>.json`` recording the file's rows,
    size and CRC-32 (``kdata.scoring.cache_entries``). One that does not match is a miss: dropped
    under the entry's lock with a warning line naming the file, computed again and rewritten."""
    from kdata.core.errors import KdataError
    from kdata.core.lock import acquire
    from kdata.core.paths import cache_dir
    from kdata.scoring.cache_entries import write_entry

    key = json.dumps([FEATURES_VERSION, unit.fingerprint(), unit.name, bool(pixels), PIXEL_SIZE, max_pixels])
    try:
        path = cache_dir("dedup-features") / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.parquet"
    except OSError:
        return _unit_features(unit, pixels, wanted, workers, max_pixels=max_pixels) or _features_table([], [], pixels)
    marker = path.with_suffix(".json")
    table = _cached_features(path, marker, pixels)
    if table is not None:
        return table
    try:
        lock = acquire(path, wait=True)
    except KdataError:  # read-only cache
        return _unit_features(unit, pixels, wanted, workers, max_pixels=max_pixels) or _features_table([], [], pixels)
    try:
        table = _cached_features(path, marker, pixels, lock=lock)
        if table is not None:
            return table
        table = _unit_features(unit, pixels, wanted, workers, max_pixels=max_pixels)
        if table is None:  # holds none of ``wanted``: nothing computed, nothing cached
            return _features_table([], [], pixels)
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


def _unit_features(unit, pixels: bool, wanted=None, workers=0, *, chunk: int = 1024,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Features of every row of ``unit``, ``chunk`` rows at a time from its row plan (a unit's payloads
    are never all held); None when ``wanted`` is given and the unit holds none of its ids.

    With workers, each task ships the plan for its rows (``plan.part``: a file list, a Parquet or tar
    path; only an in-memory unit's own rows), in chunks small enough for every worker to take some;
    a unit without addressable rows and without images (a text file) is hashed here."""
    from kdata.dedup.feature_workers import feature_workers

    plan = unit.plan()
    if wanted is not None and not any(i in wanted for i in plan.sample_ids().to_pylist()):
        return None
    n = plan.num_rows
    with feature_workers(workers, rows=n) as fw:
        shipped = bool(fw.workers) and (unit.rows is not None or _has_images(plan.read_rows(0, n)))  # in memory
        if shipped:
            chunk = max(64, min(chunk, -(-n // (4 * fw.workers))))
        tasks = ((plan.part(s, min(n, s + chunk)) if shipped else plan, s, min(n, s + chunk), pixels, max_pixels)
                 for s in range(0, n, chunk))
        ids, hashes, vecs = [], [], []
        for i, h, v in fw.map(rows_features, tasks, inline=not shipped):
            ids += i
            hashes += h
            vecs.append(v)
    return _features_table(ids, hashes, pixels, np.concatenate(vecs) if pixels and vecs else None)


def _has_images(table) -> bool:
    return "image" in table.column_names and table.column("image").null_count < table.num_rows


def rows_features(task: tuple) -> tuple[list[str], list[str], np.ndarray | None]:
    """``sample_id``s, hashes and pixel embeddings of rows ``[start, stop)`` of a unit's row plan
    (``task``: plan, start, stop, pixels[, max_pixels]); run by a feature worker (or in-process)."""
    import pyarrow as pa

    plan, start, stop, pixels, *cap = task
    t = plan.read_rows(start, stop)
    h, v = payload_features(t, pixels=pixels, max_pixels=_cap(cap))
    return t.column("sample_id").cast(pa.string()).to_pylist(), h, v


def _features_table(ids: list, hashes: list, pixels: bool, vecs: np.ndarray | None = None):
    """The cached features table: ``sample_id``, ``hash`` and, with ``pixels``, the embeddings."""
    import pyarrow as pa

    cols = {"sample_id": pa.array(ids, pa.string()), "hash": pa.array(hashes, pa.string())}
    if pixels:
        flat = np.zeros(0, np.float32) if vecs is None else vecs.reshape(-1)
        cols["pixels"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), PIXEL_SIZE * PIXEL_SIZE)
    return pa.table(cols)


def pool_features(pool, ids: np.ndarray, *, pixels: bool, workers=0,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """Hashes and pixel embeddings for ``ids``, unit by unit over the pool (``unit_features``, cached;
    memory: only the small per-sample features are kept, never the payloads of more than ``chunk``
    rows of one unit). A unit not cached that holds none of ``ids`` is not read; no unit after the
    one holding the last of them is visited. ``workers`` (a count or ``auto``, ``--workers``; or open
    ``FeatureWorkers``): processes computing the features, started with the first unit not cached and
    kept for every later one (``kdata.dedup.feature_workers``); results do not depend on them.
    ``max_pixels``: the run's ``--max-pixels`` (images over it are not decoded)."""
    from kdata.dedup.feature_workers import feature_workers

    ids = np.asarray(ids, dtype=object)
    pos_of = {s: i for i, s in enumerate(ids.tolist())}
    hashes = np.full(len(ids), None, dtype=object)
    vecs = np.zeros((len(ids), PIXEL_SIZE * PIXEL_SIZE), np.float32) if pixels else None
    found, left = np.zeros(len(ids), dtype=bool), len(pos_of)
    with feature_workers(workers, rows=len(ids)) as fw:
        for unit in pool.units:
            if not left:
                break
            t = unit_features(unit, pixels=pixels, wanted=pos_of, workers=fw, max_pixels=max_pixels)
            got = [(r, pos_of[s]) for r, s in enumerate(t.column("sample_id").to_pylist()) if s in pos_of]
            if not got:
                continue
            rows, where = (np.array(x, dtype=np.int64) for x in zip(*got))
            h = t.column("hash").to_pylist()
            hashes[where] = [h[r] for r in rows.tolist()]
            left -= int((~found[where]).sum())
            found[where] = True
            if pixels:
                flat = t.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                vecs[where] = flat.reshape(-1, PIXEL_SIZE * PIXEL_SIZE)[rows]
    missing = int(sum(h is None for h in hashes))
    if missing:
        raise RuntimeError(f"dedup: {missing} candidates not found in the pool")
    return hashes, vecs


def warm_features(pool, *, pixels: bool, workers="auto", stop=None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """Compute and cache every unit's features (``unit_features``) before dedup asks for them: on a GPU
    run the pipeline calls this on a thread while the GPU scores, so the CPU decodes the images for dedup
    while it would otherwise wait, and dedup then reads the cache. ``stop`` (a ``threading.Event``) ends
    it between units. Returns how many units it visited; the features are those dedup computes itself."""
    rows = 0
    for unit in pool.units:
        if stop is not None and stop.is_set():
            return 0
        rows += len(unit.sample_ids())
    from kdata.dedup.feature_workers import feature_workers

    done = 0
    with feature_workers(workers, rows=rows) as fw:
        for unit in pool.units:
            if stop is not None and stop.is_set():
                break
            unit_features(unit, pixels=pixels, workers=fw, max_pixels=max_pixels)
            done += 1
    return done
