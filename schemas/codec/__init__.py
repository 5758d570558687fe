"""The columnar Avro codec's insides, private to ``schemas``: import ``schemas.columnar``.

``program``/``decode``/``cursor``/``groups`` decode field by field across a batch,
``pycolumns`` is the per-record (fastavro) path to the same columns, ``encode`` writes
columns back, ``vec`` holds the varint arithmetic, ``native`` the C byte kernels.
"""
