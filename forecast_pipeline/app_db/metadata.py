"""The one SQLAlchemy metadata every application table registers on."""

import sqlalchemy as sa

app_metadata = sa.MetaData()
