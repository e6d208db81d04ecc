-- The memory-nexus 0.1.2 schema, statement for statement, so memory-nexus can open a database we create.
-- FTS5 makes its shadow tables and SQLite makes sqlite_sequence, so neither is listed here.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    project_path_encoded TEXT NOT NULL,
    project_path_decoded TEXT NOT NULL,
    project_name TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    message_count INTEGER DEFAULT 0,
    summary TEXT,
    created_at TEXT DEFAULT (datetime('now')),
    updated_at TEXT DEFAULT (datetime('now'))
);
CREATE INDEX idx_sessions_project ON sessions(project_path_encoded);
CREATE INDEX idx_sessions_start_time ON sessions(start_time);
CREATE TABLE messages_meta (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    session_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    tool_use_ids TEXT,
    FOREIGN KEY (session_id) REFERENCES sessions(id) ON DELETE CASCADE
);
CREATE INDEX idx_messages_session ON messages_meta(session_id);
CREATE INDEX idx_messages_timestamp ON messages_meta(timestamp);
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content,
    content=messages_meta,
    content_rowid=rowid,
    tokenize='porter unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages_meta BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages_meta BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES('delete', old.rowid, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE ON messages_meta BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES('delete', old.rowid, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TABLE tool_uses (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'success', 'error')),
    result TEXT,
    FOREIGN KEY (session_id) REFERENCES sessions(id) ON DELETE CASCADE
);
CREATE INDEX idx_tool_uses_session ON tool_uses(session_id);
CREATE INDEX idx_tool_uses_name ON tool_uses(name);
CREATE TABLE links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_type TEXT NOT NULL CHECK (source_type IN ('session', 'message', 'topic')),
    source_id TEXT NOT NULL,
    target_type TEXT NOT NULL CHECK (target_type IN ('session', 'message', 'topic')),
    target_id TEXT NOT NULL,
    relationship TEXT NOT NULL CHECK (relationship IN ('mentions', 'related_to', 'continues')),
    weight REAL DEFAULT 1.0 CHECK (weight >= 0 AND weight <= 1),
    UNIQUE(source_type, source_id, target_type, target_id, relationship)
);
CREATE INDEX idx_links_source ON links(source_type, source_id);
CREATE INDEX idx_links_target ON links(target_type, target_id);
CREATE TABLE topics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    created_at TEXT DEFAULT (datetime('now'))
);
CREATE INDEX idx_topics_name ON topics(name);
CREATE TABLE extraction_state (
    id TEXT PRIMARY KEY,
    session_path TEXT UNIQUE NOT NULL,
    started_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'complete', 'error')),
    completed_at TEXT,
    messages_extracted INTEGER DEFAULT 0,
    error_message TEXT,
    file_mtime TEXT,
    file_size INTEGER
);
CREATE INDEX idx_extraction_session_path ON extraction_state(session_path);
CREATE INDEX idx_extraction_status ON extraction_state(status);
CREATE TABLE entities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL CHECK (type IN ('concept', 'file', 'decision', 'term')),
    name TEXT NOT NULL,
    metadata TEXT,
    confidence REAL DEFAULT 1.0 CHECK (confidence >= 0 AND confidence <= 1),
    created_at TEXT DEFAULT (datetime('now')),
    UNIQUE(type, name)
);
CREATE INDEX idx_entities_type ON entities(type);
CREATE INDEX idx_entities_name ON entities(name);
CREATE TABLE session_entities (
    session_id TEXT NOT NULL,
    entity_id INTEGER NOT NULL,
    frequency INTEGER DEFAULT 1,
    FOREIGN KEY (session_id) REFERENCES sessions(id) ON DELETE CASCADE,
    FOREIGN KEY (entity_id) REFERENCES entities(id) ON DELETE CASCADE,
    PRIMARY KEY (session_id, entity_id)
);
CREATE TABLE entity_links (
    source_id INTEGER NOT NULL,
    target_id INTEGER NOT NULL,
    relationship TEXT NOT NULL CHECK (relationship IN ('related', 'implies', 'contradicts')),
    weight REAL DEFAULT 1.0 CHECK (weight >= 0 AND weight <= 1),
    FOREIGN KEY (source_id) REFERENCES entities(id) ON DELETE CASCADE,
    FOREIGN KEY (target_id) REFERENCES entities(id) ON DELETE CASCADE,
    PRIMARY KEY (source_id, target_id, relationship)
);
CREATE VIRTUAL TABLE sessions_fts USING fts5(
    session_id,
    summary,
    tokenize='porter unicode61'
);
CREATE TRIGGER sessions_fts_update AFTER UPDATE OF summary ON sessions
WHEN new.summary IS NOT NULL AND new.summary != ''
BEGIN
    DELETE FROM sessions_fts WHERE session_id = old.id;
    INSERT INTO sessions_fts(session_id, summary) VALUES (new.id, new.summary);
END;
CREATE TRIGGER sessions_fts_delete AFTER DELETE ON sessions BEGIN
    DELETE FROM sessions_fts WHERE session_id = old.id;
END;
