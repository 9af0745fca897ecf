"""The shop: where Tend reads what customers bought, and sets aside the rows it cannot use.

Takes the shop's SQL database (any SQLAlchemy URL holding, or viewing its own tables as, the
four tables of ``schema``) or a folder of the shop's CSV exports (``csv_import`` loads them
into that schema), and gives validated orders with their lines, customers and products for the
features stage, with every row that breaks a row rule (``rules``, the same for both ways in)
quarantined with its reason and counted. ``read`` is the reading API; ``screen`` checks whole
columns, ``sqlite_fast`` reads a SQLite shop through Arrow, ``columns`` holds the Arrow helpers.
Only ``csv_import`` writes, and only into those four tables.
"""
