"""The shop: where Tend reads what customers bought.

Takes a SQLAlchemy URL of the shop's database (any SQL database; the four tables of
``schema``) or a folder of CSV exports, and gives order histories for the features stage.
``schema`` names the tables, ``read`` reads them (quarantining rows that break the row rules),
``csv_import`` loads CSV exports into that schema. Nothing here writes to the shop.
"""
