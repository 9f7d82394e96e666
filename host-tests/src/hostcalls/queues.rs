//! Shared queues: register, resolve, enqueue, dequeue.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, token_ptr: i32| -> i32 {
            guard!(c, "proxy_register_shared_queue");
            let name = match read_str(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let token = {
                let state = c.data();
                let (index, root) = (state.index, state.root_context);
                let mut world = state.world.lock();
                let key = (state.options.vm_id.clone(), name);
                if let Some(queue) = world.queues.get_mut(&key) {
                    // Re-registration moves delivery to the newest registrant, as in cpp-host.
                    queue.owner_vm = index;
                    queue.owner_context = root;
                    queue.token
                } else {
                    let token = world.next_queue_token;
                    world.next_queue_token += 1;
                    world.queues.insert(
                        key,
                        Queue {
                            token,
                            items: Default::default(),
                            owner_vm: index,
                            owner_context: root,
                        },
                    );
                    token
                }
            };
            code(write_u32(&mut c, token_ptr, token))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, token_ptr: i32| -> i32 {
            guard!(c, "proxy_resolve_shared_queue");
            let (vm_id, name) = match (read_str(&mut c, vp, vl), read_str(&mut c, np, nl)) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let vm_id = if vm_id.is_empty() {
                c.data().options.vm_id.clone()
            } else {
                vm_id
            };
            let token = c
                .data()
                .world
                .lock()
                .queues
                .get(&(vm_id, name))
                .map(|q| q.token);
            match token {
                Some(token) => code(write_u32(&mut c, token_ptr, token)),
                None => Status::NotFound.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, token: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_enqueue_shared_queue");
            let value = match read(&mut c, vp, vl) {
                Ok(v) => v,
                Err(s) => return s.code(),
            };
            let mut world = c.data().world.lock();
            let Some(queue) = world.queues.values_mut().find(|q| q.token == token as u32) else {
                return Status::NotFound.code();
            };
            queue.items.push_back(value);
            let posted = Posted::QueueReady {
                vm: queue.owner_vm,
                context_id: queue.owner_context,
                token: queue.token,
            };
            // Delivered later on the registrant's event loop, never inside this call.
            world.posted.push_back(posted);
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_dequeue_shared_queue");
            let item = {
                let mut world = c.data().world.lock();
                let Some(queue) = world.queues.values_mut().find(|q| q.token == token as u32)
                else {
                    return Status::NotFound.code();
                };
                queue.items.pop_front()
            };
            match item {
                Some(item) => code(give(&mut c, &item, ptr_ptr, size_ptr)),
                None => Status::Empty.code(),
            }
        },
    )?;
    Ok(())
}
