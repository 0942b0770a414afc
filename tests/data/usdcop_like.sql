-- The USDCOP-like test database: tests/common/postgres.rs (load_usdcop_like)
-- and scripts/bench-postgres.sh both load this file, after replacing
-- {bars}, {pipeline_rows}, {per_bar} and {sizes} (comma-separated artifact
-- sizes, -1 for NULL). Everything is a pure function of the row number.
BEGIN;
CREATE TABLE usdcop_m5_ohlcv (
    time   timestamptz NOT NULL,
    symbol text NOT NULL,
    open   numeric(12,4) NOT NULL,
    high   numeric(12,4) NOT NULL,
    low    numeric(12,4) NOT NULL,
    close  numeric(12,4) NOT NULL,
    volume bigint,
    PRIMARY KEY (time, symbol)
);
-- Prices in 1/10000 COP: a random walk of ±1 COP steps from 4000 COP.
INSERT INTO usdcop_m5_ohlcv
SELECT ts, 'USD/COP',
       o / 10000.0,
       (greatest(o, c) + (h >> 40) % 20000) / 10000.0,
       (least(o, c) - (h >> 45) % 20000) / 10000.0,
       c / 10000.0,
       CASE WHEN i % 47 = 0 THEN NULL ELSE 1000 + (h >> 8) % 2000000 END
FROM (
    SELECT i, h, ts, c - d AS o, c
    FROM (
        SELECT i, h, d, ts,
               40000000 + sum(d) OVER (ORDER BY i) AS c
        FROM (
            SELECT i, h, h % 20001 - 10000 AS d,
                   timestamptz '2019-01-02 13:00:00+00' + (i - 1) * interval '5 minutes' AS ts
            FROM (
                SELECT i, ('x' || substr(md5('bar:' || i), 1, 15))::bit(60)::bigint AS h
                FROM generate_series(1, {bars}) AS i
            ) AS hashed
        ) AS steps
    ) AS walk
) AS walk_bars;

CREATE TABLE pipeline_status (
    id          serial PRIMARY KEY,
    pipeline    text NOT NULL,
    status      text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    details     jsonb
);
INSERT INTO pipeline_status (pipeline, status, started_at, finished_at, details)
SELECT (ARRAY['l0_ingest', 'l1_features', 'l2_dataset', 'l3_train', 'l4_backtest', 'l5_serve'])[1 + i % 6],
       CASE WHEN i % 97 = 0 THEN 'running' WHEN i % 29 = 0 THEN 'failed' ELSE 'success' END,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '17 minutes',
       CASE WHEN i % 97 = 0 THEN NULL
            ELSE timestamptz '2024-01-01 00:00:00+00' + i * interval '17 minutes' + (i % 600) * interval '1.5 seconds' END,
       CASE WHEN i % 13 = 0 THEN NULL ELSE jsonb_build_object(
           'run', i,
           'rows', (i * 7919) % 100000,
           'ok', i % 29 <> 0,
           'ratio', round(i / 7.0, 6),
           'tags', jsonb_build_array('usdcop', 'm5', i % 3),
           'error', CASE WHEN i % 29 = 0 THEN E'timeout: upstream "TwelveData" \\ retry ' || i END,
           'source', 'señal ✓') END
FROM generate_series(1, {pipeline_rows}) AS i;

CREATE TABLE model_registry (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    version    int NOT NULL,
    trained_at timestamptz NOT NULL,
    metrics    jsonb NOT NULL,
    artifact   bytea,
    UNIQUE (name, version)
);
-- Artifacts: a chain of MD5 digests, cut to size (incompressible).
INSERT INTO model_registry (name, version, trained_at, metrics, artifact)
SELECT (ARRAY['ppo_usdcop', 'lstm_usdcop', 'xgb_direction'])[1 + (k - 1) % 3],
       1 + (k - 1) / 3,
       timestamptz '2024-03-01 00:00:00+00' + k * interval '3 days 7 hours',
       jsonb_build_object('sharpe', round(k * 0.137, 3), 'max_drawdown', -0.05 * k,
                          'win_rate', 0.5 + k / 100.0, 'features', k * 12),
       CASE WHEN size < 0 THEN NULL
            ELSE coalesce(substring((
                SELECT string_agg(decode(md5('artifact:' || k || ':' || j), 'hex'), ''::bytea ORDER BY j)
                FROM generate_series(1, (size + 15) / 16) AS j) FROM 1 FOR size), ''::bytea) END
FROM (
    SELECT size::int AS size, k::int AS k
    FROM unnest(ARRAY[{sizes}]::bigint[]) WITH ORDINALITY AS u(size, k)
) AS s
ORDER BY k;

CREATE TABLE features (
    time  timestamptz NOT NULL,
    name  text NOT NULL,
    value double precision,
    note  text
);
INSERT INTO features
SELECT timestamptz '2019-01-02 13:00:00+00' + (i - 1) * interval '5 minutes',
       (ARRAY['ret_5m', 'rsi_14', 'atr_14', 'macd_hist'])[f],
       CASE WHEN n % 211 = 0 THEN NULL
            WHEN n % 10007 = 1 THEN 'NaN'
            WHEN n % 10007 = 2 THEN 'Infinity'
            WHEN n % 10007 = 3 THEN '-Infinity'
            WHEN n % 10007 = 4 THEN '-0'
            ELSE (h % 2000001 - 1000000) / 1000003.0::float8 END,
       CASE WHEN n % 5003 = 0 THEN repeat(md5('note:' || n), 1000 + n % 1000)
            WHEN n % 499 = 0 THEN repeat(E'divergencia señal – ₱ ✓\ttab "quoted" \\ back\\slash\n', 20 + n % 200)
            WHEN n % 7 = 0 THEN 'short note ' || n
            ELSE NULL END
FROM (
    SELECT i, f, n, ('x' || substr(md5('feature:' || n), 1, 15))::bit(60)::bigint AS h
    FROM (
        SELECT i, f, (i - 1) * {per_bar} + f AS n
        FROM generate_series(1, {bars}) AS i, generate_series(1, {per_bar}) AS f
    ) AS grid
) AS feature_rows;
CREATE INDEX features_time_name ON features (time, name);
COMMIT;
