;; org.weft.test.tables: grows a funcref table on request (tests only).
;; "big" asks for 32 Mi more elements (256 MiB at wasmtime's 8 bytes each), anything else
;; for 1000; the reply is "grown" or "refused" (table.grow returned -1).
(module
  (import "weft:app/notify@0.1.0" "ready" (func $ready))
  (import "weft:app/ipc@0.1.0" "send" (func $send (param i32 i32 i32)))
  (import "weft:app/ipc@0.1.0" "recv" (func $recv (param i32)))
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (data (i32.const 64) "grown")
  (data (i32.const 80) "refused")
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "run")
    (local $delta i32)
    call $ready
    (block $closed
      (loop $next
        (global.set $heap (i32.const 4096))
        (call $recv (i32.const 8))
        (br_if $closed (i32.eqz (i32.load8_u (i32.const 8))))
        ;; first byte of the message: 'b' (98) means big
        (local.set $delta (select (i32.const 33554432) (i32.const 1000)
                                  (i32.eq (i32.load8_u (i32.load (i32.const 12))) (i32.const 98))))
        (if (i32.eq (table.grow $t (ref.null func) (local.get $delta)) (i32.const -1))
          (then (call $send (i32.const 80) (i32.const 7) (i32.const 32)))
          (else (call $send (i32.const 64) (i32.const 5) (i32.const 32))))
        (br $next))))
)
