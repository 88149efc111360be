"""Prefect flows over the pipeline (``pip install 'kdata[flows]'``): ``curate``, ``distill`` and ``serve``.

Importable by name, so Dask workers and ``prefect deploy`` find them; the top-level ``flows/``
directory keeps the runnable entry points and ``prefect.yaml``.
"""
