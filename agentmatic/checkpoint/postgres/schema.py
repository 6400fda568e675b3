"""The PostgresSaver's schema: numbered migrations recorded in a table.

`MIGRATIONS[n]` is migration number ``n + 1``; the list only ever grows.
`apply_migrations` runs the missing ones through any DB-API cursor, inside
the caller's transaction and under a transaction-scoped advisory lock, so
two processes (or a Django migration and a saver) setting up one database
at once apply each migration exactly once.

The tables, in short:

- ``agentmatic_checkpoints``: one immutable row per checkpoint. The
  checkpoint itself is stored without its large channel values (those live
  in ``agentmatic_blobs``); step, source, actor, run id and the time of
  the write have columns of their own (and are not repeated in the
  metadata), and the rest of the metadata is ``jsonb`` for filters. A row
  written by a step of one task also carries that task's writes on its
  parent (the ``carried_`` columns, see migration 7): a step is one row.
- ``agentmatic_writes``: the other writes of the tasks that ran from a
  checkpoint, one row per task and call (the first write in the columns,
  the others in ``extra``) plus one row per special-channel write (errors,
  interrupts). No foreign key ties them to their checkpoint: a delta
  channel's value (the message log) is its nearest snapshot plus the writes
  since, so they must outlive a checkpoint row deleted by a plain
  ``DELETE`` (which moves the writes its rows carried here).
- ``agentmatic_blobs``: channel values, keyed by thread, namespace, channel,
  version and segment, owned by no checkpoint row. A list is stored as
  hashed chunks plus a tail, or as the items it appends to an earlier
  version (see `lists`).
- ``agentmatic_chunks``: list chunks, content-addressed within a thread.
- ``agentmatic_threads``: one row per thread and namespace, locked by each
  write (one writer per thread) and paged by newest activity.
- ``agentmatic_leases``: which process runs a thread.

Checkpoint ids and versions compare byte by byte (``COLLATE "C"``), as they
do in Python: ids sort by time whatever the database's own collation.

`segment` numbers, within a thread and namespace, a stretch of checkpoints
each written as the child of the one written just before it. Inside one
segment checkpoint ids grow along the chain, so "the writes between two
checkpoints" is an id range, answerable without the rows in between.
"""

from __future__ import annotations

from typing import Any

# Taken inside the migration transaction; any 64-bit constant of our own.
ADVISORY_LOCK_KEY = 0x6167_656E_746D_6174  # "agentmat"

MIGRATIONS_TABLE = "agentmatic_migrations"

MIGRATIONS: list[str] = [
    # 1: the record of applied migrations.
    """
    CREATE TABLE IF NOT EXISTS agentmatic_migrations (
        v integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # 2: checkpoints, writes, blobs, chunks, threads, leases.
    """
    CREATE TABLE agentmatic_threads (
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        segment bigint NOT NULL DEFAULT 0,
        checkpoints integer NOT NULL DEFAULT 0,
        thread_id text NOT NULL,
        checkpoint_ns text NOT NULL DEFAULT '',
        last_checkpoint_id text COLLATE "C",
        agent text,
        started_by text,
        forked_from jsonb,
        PRIMARY KEY (thread_id, checkpoint_ns)
    ) WITH (fillfactor = 50);
    CREATE INDEX agentmatic_threads_recent
        ON agentmatic_threads (updated_at DESC, thread_id DESC)
        WHERE checkpoint_ns = '';
    CREATE INDEX agentmatic_threads_agent_recent
        ON agentmatic_threads (agent, updated_at DESC, thread_id DESC)
        WHERE checkpoint_ns = '';

    CREATE TABLE agentmatic_checkpoints (
        created_at timestamptz NOT NULL DEFAULT now(),
        segment bigint NOT NULL DEFAULT 0,
        step integer,
        run_id uuid,
        thread_id text NOT NULL,
        checkpoint_ns text NOT NULL DEFAULT '',
        checkpoint_id text COLLATE "C" NOT NULL,
        parent_checkpoint_id text COLLATE "C",
        source text,
        actor text,
        type text NOT NULL,
        checkpoint bytea NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{}',
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
    );
    -- Ids sort by time and rows arrive in time order, so one small BRIN
    -- index serves both retention (created_at) and finding a checkpoint by
    -- id alone (a fork from another thread).
    CREATE INDEX agentmatic_checkpoints_by_time
        ON agentmatic_checkpoints USING brin (created_at, checkpoint_id);

    CREATE TABLE agentmatic_writes (
        created_at timestamptz NOT NULL DEFAULT now(),
        segment bigint,
        idx integer NOT NULL,
        thread_id text NOT NULL,
        checkpoint_ns text NOT NULL DEFAULT '',
        checkpoint_id text COLLATE "C" NOT NULL,
        task_id text NOT NULL,
        channel text NOT NULL,
        type text,
        task_path text NOT NULL DEFAULT '',
        blob bytea NOT NULL,
        extra bytea,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
    );

    CREATE TABLE agentmatic_blobs (
        created_at timestamptz NOT NULL DEFAULT now(),
        segment bigint NOT NULL DEFAULT 0,
        depth integer NOT NULL DEFAULT 0,
        thread_id text NOT NULL,
        checkpoint_ns text NOT NULL DEFAULT '',
        channel text NOT NULL,
        version text COLLATE "C" NOT NULL,
        checkpoint_id text COLLATE "C" NOT NULL,
        type text NOT NULL,
        base_version text COLLATE "C",
        chunks bytea,
        data bytea,
        PRIMARY KEY (thread_id, checkpoint_ns, channel, version, segment)
    ) WITH (toast_tuple_target = 8160);
    ALTER TABLE agentmatic_blobs ALTER COLUMN data SET STORAGE MAIN;
    CREATE INDEX agentmatic_blobs_by_segment
        ON agentmatic_blobs (thread_id, checkpoint_ns, channel, segment, checkpoint_id);

    CREATE TABLE agentmatic_chunks (
        created_at timestamptz NOT NULL DEFAULT now(),
        thread_id text NOT NULL,
        hash bytea NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (thread_id, hash)
    ) WITH (toast_tuple_target = 8160);
    -- Chunks arrive compressed: keep them in the row, out of TOAST's way.
    ALTER TABLE agentmatic_chunks ALTER COLUMN data SET STORAGE MAIN;

    CREATE TABLE agentmatic_leases (
        thread_id text PRIMARY KEY,
        owner text NOT NULL,
        acquired_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
    )
    """,
    # 3: keep each thread's checkpoint count right whoever deletes rows (the
    # seed's retention SQL is a plain DELETE on agentmatic_checkpoints).
    """
    CREATE FUNCTION agentmatic_count_deleted() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE agentmatic_threads t
        SET checkpoints = greatest(t.checkpoints - g.n, 0)
        FROM (
            SELECT thread_id, checkpoint_ns, count(*) AS n
            FROM gone GROUP BY thread_id, checkpoint_ns
        ) g
        WHERE t.thread_id = g.thread_id AND t.checkpoint_ns = g.checkpoint_ns;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER agentmatic_checkpoints_deleted
        AFTER DELETE ON agentmatic_checkpoints
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION agentmatic_count_deleted()
    """,
    # 4: a checkpoint write in one round trip (see `PUT_FUNCTION`).
    """
    CREATE FUNCTION agentmatic_put(
        p_thread text, p_ns text, p_id text, p_parent text,
        p_check boolean, p_expected text, p_strict boolean,
        p_step integer, p_source text, p_actor text, p_run_id uuid,
        p_type text, p_checkpoint bytea, p_metadata jsonb,
        p_agent text, p_started_by text, p_forked_from jsonb,
        p_created_at timestamptz,
        b_channel text[], b_version text[], b_type text[], b_data bytea[],
        b_chunks bytea[], b_base text[], b_depth integer[],
        c_hash bytea[], c_data bytea[]
    ) RETURNS TABLE (outcome text, head text, segment bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_last text;
        v_segment bigint;
        v_head text;
        v_linear boolean;
        v_added integer;
    BEGIN
        INSERT INTO agentmatic_threads AS t (thread_id, checkpoint_ns)
        VALUES (p_thread, p_ns) ON CONFLICT DO NOTHING;
        SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
        FROM agentmatic_threads t
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        IF p_check THEN
            SELECT max(c.checkpoint_id) INTO v_head FROM agentmatic_checkpoints c
            WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns;
            IF v_head IS DISTINCT FROM p_expected THEN
                RETURN QUERY SELECT 'conflict'::text, v_head, v_segment;
                RETURN;
            END IF;
        END IF;
        v_linear := p_parent IS NOT NULL AND p_parent = v_last
            AND p_id > v_last COLLATE "C";
        IF NOT v_linear THEN
            IF p_strict THEN
                RETURN QUERY SELECT 'nonlinear'::text, v_head, v_segment;
                RETURN;
            END IF;
            v_segment := v_segment + 1;
        END IF;
        IF c_hash IS NOT NULL THEN
            INSERT INTO agentmatic_chunks (thread_id, hash, data)
            SELECT p_thread, h, d FROM unnest(c_hash, c_data) AS x(h, d)
            ON CONFLICT DO NOTHING;
        END IF;
        IF b_channel IS NOT NULL THEN
            INSERT INTO agentmatic_blobs (thread_id, checkpoint_ns, channel, version,
                segment, checkpoint_id, type, data, chunks, base_version, depth)
            SELECT p_thread, p_ns, ch, ver, v_segment, p_id, ty, da, hs, ba, de
            FROM unnest(b_channel, b_version, b_type, b_data, b_chunks, b_base,
                b_depth) AS x(ch, ver, ty, da, hs, ba, de)
            ON CONFLICT DO NOTHING;
        END IF;
        INSERT INTO agentmatic_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
            parent_checkpoint_id, segment, created_at, step, source, actor, run_id,
            type, checkpoint, metadata)
        VALUES (p_thread, p_ns, p_id, p_parent, v_segment,
            coalesce(p_created_at, now()), p_step, p_source, p_actor, p_run_id,
            p_type, p_checkpoint, p_metadata)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_added = ROW_COUNT;
        -- updated_at moves at most once a second: the thread row then
        -- takes heap-only updates (it is indexed by updated_at).
        UPDATE agentmatic_threads t SET
            last_checkpoint_id = CASE WHEN v_added > 0 THEN p_id
                ELSE t.last_checkpoint_id END,
            segment = CASE WHEN v_added > 0 THEN v_segment ELSE t.segment END,
            checkpoints = t.checkpoints + v_added,
            updated_at = CASE WHEN t.updated_at < now() - interval '1 second'
                THEN now() ELSE t.updated_at END,
            agent = coalesce(t.agent, p_agent),
            started_by = coalesce(t.started_by, p_started_by),
            forked_from = coalesce(t.forked_from, p_forked_from)
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns;
        RETURN QUERY SELECT 'ok'::text, v_head, v_segment;
    END
    $$
    """,
    # 5: a step in one round trip. `agentmatic_put` also stores the writes of
    # the tasks that ran from the parent (the `w_` arrays, one entry a row),
    # refusing ('rewrite') before it changes anything when one of those tasks
    # stored writes there already: the saver then takes its transactional
    # path. It reads the head with one index read. Older callers, passing no
    # `w_` arrays, get the function they knew.
    """
    DROP FUNCTION agentmatic_put(text, text, text, text, boolean, text, boolean,
        integer, text, text, uuid, text, bytea, jsonb, text, text, jsonb,
        timestamptz, text[], text[], text[], bytea[], bytea[], text[], integer[],
        bytea[], bytea[]);
    CREATE FUNCTION agentmatic_put(
        p_thread text, p_ns text, p_id text, p_parent text,
        p_check boolean, p_expected text, p_strict boolean,
        p_step integer, p_source text, p_actor text, p_run_id uuid,
        p_type text, p_checkpoint bytea, p_metadata jsonb,
        p_agent text, p_started_by text, p_forked_from jsonb,
        p_created_at timestamptz,
        b_channel text[], b_version text[], b_type text[], b_data bytea[],
        b_chunks bytea[], b_base text[], b_depth integer[],
        c_hash bytea[], c_data bytea[],
        w_task text[] DEFAULT NULL, w_path text[] DEFAULT NULL,
        w_idx integer[] DEFAULT NULL, w_channel text[] DEFAULT NULL,
        w_type text[] DEFAULT NULL, w_blob bytea[] DEFAULT NULL,
        w_extra bytea[] DEFAULT NULL
    ) RETURNS TABLE (outcome text, head text, segment bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_last text;
        v_segment bigint;
        v_head text;
        v_linear boolean;
        v_added integer;
    BEGIN
        SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
        FROM agentmatic_threads t
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO agentmatic_threads AS t (thread_id, checkpoint_ns)
            VALUES (p_thread, p_ns) ON CONFLICT DO NOTHING;
            SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
            FROM agentmatic_threads t
            WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        END IF;
        IF p_check THEN
            -- Not max(): without statistics the planner may aggregate over
            -- every checkpoint of the thread instead of reading one.
            SELECT c.checkpoint_id INTO v_head FROM agentmatic_checkpoints c
            WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
            ORDER BY c.checkpoint_id DESC LIMIT 1;
            IF v_head IS DISTINCT FROM p_expected THEN
                RETURN QUERY SELECT 'conflict'::text, v_head, v_segment;
                RETURN;
            END IF;
        END IF;
        v_linear := p_parent IS NOT NULL AND p_parent = v_last
            AND p_id > v_last COLLATE "C";
        IF NOT v_linear AND p_strict THEN
            RETURN QUERY SELECT 'nonlinear'::text, v_head, v_segment;
            RETURN;
        END IF;
        IF w_task IS NOT NULL THEN
            IF EXISTS (
                SELECT 1 FROM agentmatic_writes w
                WHERE w.thread_id = p_thread AND w.checkpoint_ns = p_ns
                    AND w.checkpoint_id = p_parent AND w.task_id = ANY(w_task)
                    AND w.idx >= 0
            ) THEN
                RETURN QUERY SELECT 'rewrite'::text, v_head, v_segment;
                RETURN;
            END IF;
            -- The parent is the thread's last checkpoint when the write is
            -- linear, so its segment is the thread's.
            INSERT INTO agentmatic_writes AS w (thread_id, checkpoint_ns,
                checkpoint_id, task_id, idx, channel, type, blob, extra,
                task_path, segment)
            SELECT p_thread, p_ns, p_parent, x.task, x.idx, x.channel, x.type,
                x.blob, x.extra, x.path,
                CASE WHEN v_linear THEN v_segment ELSE (
                    SELECT c.segment FROM agentmatic_checkpoints c
                    WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
                        AND c.checkpoint_id = p_parent) END
            FROM unnest(w_task, w_path, w_idx, w_channel, w_type, w_blob, w_extra)
                AS x(task, path, idx, channel, type, blob, extra)
            ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
            DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type,
                blob = EXCLUDED.blob, task_path = EXCLUDED.task_path
            WHERE EXCLUDED.idx < 0;
        END IF;
        IF NOT v_linear THEN
            v_segment := v_segment + 1;
        END IF;
        IF c_hash IS NOT NULL THEN
            INSERT INTO agentmatic_chunks (thread_id, hash, data)
            SELECT p_thread, h, d FROM unnest(c_hash, c_data) AS x(h, d)
            ON CONFLICT DO NOTHING;
        END IF;
        IF b_channel IS NOT NULL THEN
            INSERT INTO agentmatic_blobs (thread_id, checkpoint_ns, channel, version,
                segment, checkpoint_id, type, data, chunks, base_version, depth)
            SELECT p_thread, p_ns, ch, ver, v_segment, p_id, ty, da, hs, ba, de
            FROM unnest(b_channel, b_version, b_type, b_data, b_chunks, b_base,
                b_depth) AS x(ch, ver, ty, da, hs, ba, de)
            ON CONFLICT DO NOTHING;
        END IF;
        INSERT INTO agentmatic_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
            parent_checkpoint_id, segment, created_at, step, source, actor, run_id,
            type, checkpoint, metadata)
        VALUES (p_thread, p_ns, p_id, p_parent, v_segment,
            coalesce(p_created_at, now()), p_step, p_source, p_actor, p_run_id,
            p_type, p_checkpoint, p_metadata)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_added = ROW_COUNT;
        UPDATE agentmatic_threads t SET
            last_checkpoint_id = CASE WHEN v_added > 0 THEN p_id
                ELSE t.last_checkpoint_id END,
            segment = CASE WHEN v_added > 0 THEN v_segment ELSE t.segment END,
            checkpoints = t.checkpoints + v_added,
            updated_at = CASE WHEN t.updated_at < now() - interval '1 second'
                THEN now() ELSE t.updated_at END,
            agent = coalesce(t.agent, p_agent),
            started_by = coalesce(t.started_by, p_started_by),
            forked_from = coalesce(t.forked_from, p_forked_from)
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns;
        RETURN QUERY SELECT 'ok'::text, v_head, v_segment;
    END
    $$
    """,
    # 6: checkpoints get `light`, what a timeline needs of one (see the saver),
    # and `agentmatic_put` stores it. A step whose task finds a result of its
    # own already stored (before, or by a writer racing it) raises AM001 and
    # stores nothing: the saver then takes its transactional path. A write
    # refused for its expected head leaves no thread row behind.
    """
    ALTER TABLE agentmatic_checkpoints ADD COLUMN light bytea;
    DROP FUNCTION agentmatic_put(text, text, text, text, boolean, text, boolean,
        integer, text, text, uuid, text, bytea, jsonb, text, text, jsonb,
        timestamptz, text[], text[], text[], bytea[], bytea[], text[], integer[],
        bytea[], bytea[], text[], text[], integer[], text[], text[], bytea[],
        bytea[]);
    CREATE FUNCTION agentmatic_put(
        p_thread text, p_ns text, p_id text, p_parent text,
        p_check boolean, p_expected text, p_strict boolean,
        p_step integer, p_source text, p_actor text, p_run_id uuid,
        p_type text, p_checkpoint bytea, p_metadata jsonb,
        p_agent text, p_started_by text, p_forked_from jsonb,
        p_created_at timestamptz,
        b_channel text[], b_version text[], b_type text[], b_data bytea[],
        b_chunks bytea[], b_base text[], b_depth integer[],
        c_hash bytea[], c_data bytea[],
        w_task text[] DEFAULT NULL, w_path text[] DEFAULT NULL,
        w_idx integer[] DEFAULT NULL, w_channel text[] DEFAULT NULL,
        w_type text[] DEFAULT NULL, w_blob bytea[] DEFAULT NULL,
        w_extra bytea[] DEFAULT NULL, p_light bytea DEFAULT NULL
    ) RETURNS TABLE (outcome text, head text, segment bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_last text;
        v_segment bigint;
        v_head text;
        v_linear boolean;
        v_added integer;
        v_results integer;
    BEGIN
        SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
        FROM agentmatic_threads t
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        IF NOT FOUND THEN
            IF p_check AND p_expected IS NOT NULL THEN
                SELECT c.checkpoint_id INTO v_head FROM agentmatic_checkpoints c
                WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
                ORDER BY c.checkpoint_id DESC LIMIT 1;
                IF v_head IS DISTINCT FROM p_expected THEN
                    RETURN QUERY SELECT 'conflict'::text, v_head, 0::bigint;
                    RETURN;
                END IF;
            END IF;
            INSERT INTO agentmatic_threads AS t (thread_id, checkpoint_ns)
            VALUES (p_thread, p_ns) ON CONFLICT DO NOTHING;
            SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
            FROM agentmatic_threads t
            WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        END IF;
        IF p_check THEN
            -- Not max(): without statistics the planner may aggregate over
            -- every checkpoint of the thread instead of reading one.
            SELECT c.checkpoint_id INTO v_head FROM agentmatic_checkpoints c
            WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
            ORDER BY c.checkpoint_id DESC LIMIT 1;
            IF v_head IS DISTINCT FROM p_expected THEN
                RETURN QUERY SELECT 'conflict'::text, v_head, v_segment;
                RETURN;
            END IF;
        END IF;
        v_linear := p_parent IS NOT NULL AND p_parent = v_last
            AND p_id > v_last COLLATE "C";
        IF NOT v_linear AND p_strict THEN
            RETURN QUERY SELECT 'nonlinear'::text, v_head, v_segment;
            RETURN;
        END IF;
        IF w_task IS NOT NULL THEN
            -- The parent is the thread's last checkpoint when the write is
            -- linear, so its segment is the thread's.
            WITH stored AS (
                INSERT INTO agentmatic_writes AS w (thread_id, checkpoint_ns,
                    checkpoint_id, task_id, idx, channel, type, blob, extra,
                    task_path, segment)
                SELECT p_thread, p_ns, p_parent, x.task, x.idx, x.channel, x.type,
                    x.blob, x.extra, x.path,
                    CASE WHEN v_linear THEN v_segment ELSE (
                        SELECT c.segment FROM agentmatic_checkpoints c
                        WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
                            AND c.checkpoint_id = p_parent) END
                FROM unnest(w_task, w_path, w_idx, w_channel, w_type, w_blob,
                    w_extra) AS x(task, path, idx, channel, type, blob, extra)
                ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
                DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type,
                    blob = EXCLUDED.blob, task_path = EXCLUDED.task_path
                WHERE EXCLUDED.idx < 0
                RETURNING w.idx
            )
            SELECT count(*) INTO v_results FROM stored WHERE idx >= 0;
            IF v_results < (SELECT count(*) FROM unnest(w_idx) AS i WHERE i >= 0)
            THEN
                RAISE EXCEPTION 'a task of this step stored a result before'
                    USING ERRCODE = 'AM001';
            END IF;
        END IF;
        IF NOT v_linear THEN
            v_segment := v_segment + 1;
        END IF;
        IF c_hash IS NOT NULL THEN
            INSERT INTO agentmatic_chunks (thread_id, hash, data)
            SELECT p_thread, h, d FROM unnest(c_hash, c_data) AS x(h, d)
            ON CONFLICT DO NOTHING;
        END IF;
        IF b_channel IS NOT NULL THEN
            INSERT INTO agentmatic_blobs (thread_id, checkpoint_ns, channel, version,
                segment, checkpoint_id, type, data, chunks, base_version, depth)
            SELECT p_thread, p_ns, ch, ver, v_segment, p_id, ty, da, hs, ba, de
            FROM unnest(b_channel, b_version, b_type, b_data, b_chunks, b_base,
                b_depth) AS x(ch, ver, ty, da, hs, ba, de)
            ON CONFLICT DO NOTHING;
        END IF;
        INSERT INTO agentmatic_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
            parent_checkpoint_id, segment, created_at, step, source, actor, run_id,
            type, checkpoint, metadata, light)
        VALUES (p_thread, p_ns, p_id, p_parent, v_segment,
            coalesce(p_created_at, now()), p_step, p_source, p_actor, p_run_id,
            p_type, p_checkpoint, p_metadata, p_light)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_added = ROW_COUNT;
        UPDATE agentmatic_threads t SET
            last_checkpoint_id = CASE WHEN v_added > 0 THEN p_id
                ELSE t.last_checkpoint_id END,
            segment = CASE WHEN v_added > 0 THEN v_segment ELSE t.segment END,
            checkpoints = t.checkpoints + v_added,
            updated_at = CASE WHEN t.updated_at < now() - interval '1 second'
                THEN now() ELSE t.updated_at END,
            agent = coalesce(t.agent, p_agent),
            started_by = coalesce(t.started_by, p_started_by),
            forked_from = coalesce(t.forked_from, p_forked_from)
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns;
        RETURN QUERY SELECT 'ok'::text, v_head, v_segment;
    END
    $$
    """,
    # 7: a step's writes ride in the checkpoint they lead to. When one task
    # ran from the thread's last checkpoint, the new checkpoint's row
    # carries that task's writes (the `carried_` columns), instead of a row
    # of their own in agentmatic_writes: a step costs one row, not two. The
    # writes still belong to the parent. Only a task id in a uuid's text
    # form rides (stored as a uuid); a NULL `carried_type` is the row's.
    # A carrying row is always its parent's next checkpoint by id, so a
    # reader finds a checkpoint's carried writes in the row after it;
    # whatever would break that (a checkpoint stored in between, the row
    # deleted, more writes stored on the parent) first copies them into
    # agentmatic_writes as rows of their own, and readers prefer those. A
    # DELETE also copies what the rows after its rows carry for them: a
    # deleted checkpoint's writes become rows, for collect_garbage to find.
    # Only a caller that passes `p_carry` gets its writes carried: a process
    # still running the code before this migration stores rows as it did.
    # Each of those copies holds the thread row's lock before it writes, as
    # a step does, so a copy and a step on one thread wait for each other
    # (and a DELETE's trigger that counts takes it before the one that
    # copies: triggers fire in name order).
    """
    ALTER TABLE agentmatic_checkpoints
        ADD COLUMN carried_task_id uuid,
        ADD COLUMN carried_task_path text,
        ADD COLUMN carried_idx integer,
        ADD COLUMN carried_channel text,
        ADD COLUMN carried_type text,
        ADD COLUMN carried_blob bytea,
        ADD COLUMN carried_extra bytea;

    CREATE FUNCTION agentmatic_uncarry(p_thread text, p_ns text, p_parent text)
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM agentmatic_threads t
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, checkpoint_id,
            task_id, idx, channel, type, blob, extra, task_path, segment,
            created_at)
        SELECT c.thread_id, c.checkpoint_ns, c.parent_checkpoint_id,
            c.carried_task_id::text, c.carried_idx, c.carried_channel,
            coalesce(c.carried_type, c.type), c.carried_blob, c.carried_extra,
            c.carried_task_path, c.segment,
            c.created_at
        FROM (SELECT * FROM agentmatic_checkpoints n
            WHERE n.thread_id = p_thread AND n.checkpoint_ns = p_ns
                AND n.checkpoint_id > p_parent
            ORDER BY n.checkpoint_id LIMIT 1) c
        WHERE c.parent_checkpoint_id = p_parent AND c.carried_task_id IS NOT NULL
        ON CONFLICT DO NOTHING;
    END
    $$;

    -- Any DELETE, the seed's plain retention SQL included, keeps the
    -- writes the deleted rows carried: a remaining checkpoint may rebuild
    -- its message log from them (compact collects them when nothing does).
    CREATE FUNCTION agentmatic_carry_out() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, checkpoint_id,
            task_id, idx, channel, type, blob, extra, task_path, segment,
            created_at)
        SELECT g.thread_id, g.checkpoint_ns, g.parent_checkpoint_id,
            g.carried_task_id::text, g.carried_idx, g.carried_channel,
            coalesce(g.carried_type, g.type), g.carried_blob, g.carried_extra,
            g.carried_task_path, g.segment,
            g.created_at
        FROM gone g WHERE g.carried_task_id IS NOT NULL
        ON CONFLICT DO NOTHING;
        -- And the writes on the deleted rows that the rows after them carry:
        -- rows of their own, like any deleted checkpoint's writes, for
        -- collect_garbage to find (it then clears the carried columns).
        INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, checkpoint_id,
            task_id, idx, channel, type, blob, extra, task_path, segment,
            created_at)
        SELECT c.thread_id, c.checkpoint_ns, c.parent_checkpoint_id,
            c.carried_task_id::text, c.carried_idx, c.carried_channel,
            coalesce(c.carried_type, c.type), c.carried_blob, c.carried_extra,
            c.carried_task_path, c.segment, c.created_at
        FROM gone g CROSS JOIN LATERAL (SELECT * FROM agentmatic_checkpoints n
            WHERE n.thread_id = g.thread_id AND n.checkpoint_ns = g.checkpoint_ns
                AND n.checkpoint_id > g.checkpoint_id
            ORDER BY n.checkpoint_id LIMIT 1) c
        WHERE c.parent_checkpoint_id = g.checkpoint_id
            AND c.carried_task_id IS NOT NULL
        ON CONFLICT DO NOTHING;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER agentmatic_checkpoints_deleted_carry_out
        AFTER DELETE ON agentmatic_checkpoints
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION agentmatic_carry_out();

    DROP FUNCTION agentmatic_put(text, text, text, text, boolean, text, boolean,
        integer, text, text, uuid, text, bytea, jsonb, text, text, jsonb,
        timestamptz, text[], text[], text[], bytea[], bytea[], text[], integer[],
        bytea[], bytea[], text[], text[], integer[], text[], text[], bytea[],
        bytea[], bytea);
    CREATE FUNCTION agentmatic_put(
        p_thread text, p_ns text, p_id text, p_parent text,
        p_check boolean, p_expected text, p_strict boolean,
        p_step integer, p_source text, p_actor text, p_run_id uuid,
        p_type text, p_checkpoint bytea, p_metadata jsonb,
        p_agent text, p_started_by text, p_forked_from jsonb,
        p_created_at timestamptz,
        b_channel text[], b_version text[], b_type text[], b_data bytea[],
        b_chunks bytea[], b_base text[], b_depth integer[],
        c_hash bytea[], c_data bytea[],
        w_task text[] DEFAULT NULL, w_path text[] DEFAULT NULL,
        w_idx integer[] DEFAULT NULL, w_channel text[] DEFAULT NULL,
        w_type text[] DEFAULT NULL, w_blob bytea[] DEFAULT NULL,
        w_extra bytea[] DEFAULT NULL, p_light bytea DEFAULT NULL,
        p_carry boolean DEFAULT false
    ) RETURNS TABLE (outcome text, head text, segment bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_last text;
        v_segment bigint;
        v_head text;
        v_linear boolean;
        v_added integer;
        v_results integer;
        v_carry boolean;
    BEGIN
        SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
        FROM agentmatic_threads t
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        IF NOT FOUND THEN
            IF p_check AND p_expected IS NOT NULL THEN
                SELECT c.checkpoint_id INTO v_head FROM agentmatic_checkpoints c
                WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
                ORDER BY c.checkpoint_id DESC LIMIT 1;
                IF v_head IS DISTINCT FROM p_expected THEN
                    RETURN QUERY SELECT 'conflict'::text, v_head, 0::bigint;
                    RETURN;
                END IF;
            END IF;
            INSERT INTO agentmatic_threads AS t (thread_id, checkpoint_ns)
            VALUES (p_thread, p_ns) ON CONFLICT DO NOTHING;
            SELECT t.last_checkpoint_id, t.segment INTO v_last, v_segment
            FROM agentmatic_threads t
            WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns FOR UPDATE;
        END IF;
        IF p_check THEN
            -- Not max(): without statistics the planner may aggregate over
            -- every checkpoint of the thread instead of reading one.
            SELECT c.checkpoint_id INTO v_head FROM agentmatic_checkpoints c
            WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
            ORDER BY c.checkpoint_id DESC LIMIT 1;
            IF v_head IS DISTINCT FROM p_expected THEN
                RETURN QUERY SELECT 'conflict'::text, v_head, v_segment;
                RETURN;
            END IF;
        END IF;
        v_linear := p_parent IS NOT NULL AND p_parent = v_last
            AND p_id > v_last COLLATE "C";
        IF NOT v_linear AND p_strict THEN
            RETURN QUERY SELECT 'nonlinear'::text, v_head, v_segment;
            RETURN;
        END IF;
        -- A linear step of one task carries its writes in the new
        -- checkpoint's row (see migration 7) when they are the parent's
        -- first and the new checkpoint is the parent's next by id.
        v_carry := p_carry AND w_task IS NOT NULL AND v_linear
            AND cardinality(w_task) = 1
            AND w_task[1]
                ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            AND NOT EXISTS (
                SELECT 1 FROM agentmatic_writes w
                WHERE w.thread_id = p_thread AND w.checkpoint_ns = p_ns
                    AND w.checkpoint_id = p_parent AND w.task_id = w_task[1])
            AND NOT EXISTS (
                SELECT 1 FROM agentmatic_checkpoints c
                WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
                    AND c.checkpoint_id > p_parent AND c.checkpoint_id < p_id);
        IF NOT v_linear THEN
            v_segment := v_segment + 1;
        END IF;
        IF c_hash IS NOT NULL THEN
            INSERT INTO agentmatic_chunks (thread_id, hash, data)
            SELECT p_thread, h, d FROM unnest(c_hash, c_data) AS x(h, d)
            ON CONFLICT DO NOTHING;
        END IF;
        IF b_channel IS NOT NULL THEN
            INSERT INTO agentmatic_blobs (thread_id, checkpoint_ns, channel, version,
                segment, checkpoint_id, type, data, chunks, base_version, depth)
            SELECT p_thread, p_ns, ch, ver, v_segment, p_id, ty, da, hs, ba, de
            FROM unnest(b_channel, b_version, b_type, b_data, b_chunks, b_base,
                b_depth) AS x(ch, ver, ty, da, hs, ba, de)
            ON CONFLICT DO NOTHING;
        END IF;
        INSERT INTO agentmatic_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
            parent_checkpoint_id, segment, created_at, step, source, actor, run_id,
            type, checkpoint, metadata, light, carried_task_id, carried_task_path,
            carried_idx, carried_channel, carried_type, carried_blob, carried_extra)
        SELECT p_thread, p_ns, p_id, p_parent, v_segment,
            coalesce(p_created_at, now()), p_step, p_source, p_actor, p_run_id,
            p_type, p_checkpoint, p_metadata, p_light, x.task::uuid, x.path, x.idx,
            x.channel, nullif(x.type, p_type), x.blob, x.extra
        FROM (SELECT 1) AS one LEFT JOIN unnest(w_task, w_path, w_idx, w_channel,
            w_type, w_blob, w_extra) AS x(task, path, idx, channel, type, blob,
            extra) ON v_carry
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_added = ROW_COUNT;
        IF v_added > 0 THEN
            -- A checkpoint stored between a carrying row and its parent:
            -- that row is no longer the parent's next, so its writes move.
            INSERT INTO agentmatic_writes (thread_id, checkpoint_ns, checkpoint_id,
                task_id, idx, channel, type, blob, extra, task_path, segment,
                created_at)
            SELECT c.thread_id, c.checkpoint_ns, c.parent_checkpoint_id,
                c.carried_task_id::text, c.carried_idx, c.carried_channel,
                coalesce(c.carried_type, c.type), c.carried_blob, c.carried_extra,
                c.carried_task_path, c.segment,
                c.created_at
            FROM (SELECT * FROM agentmatic_checkpoints n
                WHERE n.thread_id = p_thread AND n.checkpoint_ns = p_ns
                    AND n.checkpoint_id > p_id
                ORDER BY n.checkpoint_id LIMIT 1) c
            WHERE c.carried_task_id IS NOT NULL AND c.parent_checkpoint_id < p_id
            ON CONFLICT DO NOTHING;
        END IF;
        IF w_task IS NOT NULL AND NOT (v_carry AND v_added > 0) THEN
            -- The parent is the thread's last checkpoint when the write is
            -- linear, so its segment is the thread's.
            WITH stored AS (
                INSERT INTO agentmatic_writes AS w (thread_id, checkpoint_ns,
                    checkpoint_id, task_id, idx, channel, type, blob, extra,
                    task_path, segment)
                SELECT p_thread, p_ns, p_parent, x.task, x.idx, x.channel, x.type,
                    x.blob, x.extra, x.path,
                    CASE WHEN v_linear THEN v_segment ELSE (
                        SELECT c.segment FROM agentmatic_checkpoints c
                        WHERE c.thread_id = p_thread AND c.checkpoint_ns = p_ns
                            AND c.checkpoint_id = p_parent) END
                FROM unnest(w_task, w_path, w_idx, w_channel, w_type, w_blob,
                    w_extra) AS x(task, path, idx, channel, type, blob, extra)
                ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
                DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type,
                    blob = EXCLUDED.blob, task_path = EXCLUDED.task_path
                WHERE EXCLUDED.idx < 0
                RETURNING w.idx
            )
            SELECT count(*) INTO v_results FROM stored WHERE idx >= 0;
            IF v_results < (SELECT count(*) FROM unnest(w_idx) AS i WHERE i >= 0)
            THEN
                RAISE EXCEPTION 'a task of this step stored a result before'
                    USING ERRCODE = 'AM001';
            END IF;
        END IF;
        UPDATE agentmatic_threads t SET
            last_checkpoint_id = CASE WHEN v_added > 0 THEN p_id
                ELSE t.last_checkpoint_id END,
            segment = CASE WHEN v_added > 0 THEN v_segment ELSE t.segment END,
            checkpoints = t.checkpoints + v_added,
            updated_at = CASE WHEN t.updated_at < now() - interval '1 second'
                THEN now() ELSE t.updated_at END,
            agent = coalesce(t.agent, p_agent),
            started_by = coalesce(t.started_by, p_started_by),
            forked_from = coalesce(t.forked_from, p_forked_from)
        WHERE t.thread_id = p_thread AND t.checkpoint_ns = p_ns;
        RETURN QUERY SELECT 'ok'::text, v_head, v_segment;
    END
    $$
    """,
]

LATEST = len(MIGRATIONS)


def apply_migrations(cursor: Any) -> list[int]:
    """Apply the migrations this database lacks; return their numbers.

    `cursor` is any DB-API cursor on the target database (psycopg's, or
    Django's in a migration). The caller owns the transaction; the advisory
    lock taken here is released when it ends.
    """
    cursor.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
    cursor.execute(MIGRATIONS[0])
    cursor.execute(f"SELECT v FROM {MIGRATIONS_TABLE}")  # noqa: S608 - a constant
    applied = {int(row[0]) for row in cursor.fetchall()}
    done: list[int] = []
    for number, sql in enumerate(MIGRATIONS, start=1):
        if number in applied:
            continue
        if number > 1:
            cursor.execute(sql)
        cursor.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (v) VALUES ({number:d})"  # noqa: S608
        )
        done.append(number)
    return done


TABLES = (
    "agentmatic_checkpoints",
    "agentmatic_writes",
    "agentmatic_blobs",
    "agentmatic_chunks",
    "agentmatic_threads",
    "agentmatic_leases",
    "agentmatic_migrations",
)

__all__ = ["LATEST", "MIGRATIONS", "TABLES", "apply_migrations"]
