"""asyncpg's binary COPY round trip through the gateway (issue: masked values must keep every
tuple and field length right). Usage: asyncpg-binary-copy.py DSN (through the gateway)."""
import asyncio, io, sys

import asyncpg

EMAIL = "ann.leak@example.com"

async def main(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("drop table if exists gh_copy_src, gh_copy_dst")
        await conn.execute("create table gh_copy_src (id int, note text, tags text[], n numeric)")
        await conn.execute(
            "insert into gh_copy_src values (1, $1, array['x', $1], 1.5), (2, 'plain', null, null)",
            "write to " + EMAIL,
        )
        await conn.execute("create table gh_copy_dst (like gh_copy_src)")
        buf = io.BytesIO()
        await conn.copy_from_table("gh_copy_src", output=buf, format="binary")
        data = buf.getvalue()
        assert EMAIL.encode() not in data, "the e-mail left through binary COPY unmasked"
        buf.seek(0)
        await conn.copy_to_table("gh_copy_dst", source=buf, format="binary")
        rows = await conn.fetch("select id, note, tags, n from gh_copy_dst order by id")
        assert len(rows) == 2, rows
        assert rows[0]["id"] == 1 and EMAIL not in rows[0]["note"], rows
        assert rows[0]["note"].startswith("write to "), rows
        assert rows[1]["note"] == "plain" and rows[1]["tags"] is None, rows
        print(f"asyncpg binary COPY round trip through the gateway: OK ({len(data)} bytes, masked value {rows[0]['note']!r})")
    finally:
        await conn.execute("drop table if exists gh_copy_src, gh_copy_dst")
        await conn.close()

asyncio.run(main(sys.argv[1]))
