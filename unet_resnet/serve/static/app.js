// The page: upload an image, show it with the predicted mask on top, an opacity slider and a
// legend with each class's share of the image. No external scripts: works offline.
const $ = (id) => document.getElementById(id);
const status = (text, error = false) => {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
};

fetch("/info").then((r) => r.json()).then((info) => {
  const names = info.classes.map((c) => c.name).join(", ");
  $("model-info").textContent =
    `${info.classes.length} classes (${names}) · ${info.in_channels}-channel input · ` +
    `${info.device}, ${info.precision} · v${info.version}`;
}).catch(() => { $("model-info").textContent = "Model information unavailable"; });

async function predict(file) {
  status(`Segmenting ${file.name}…`);
  $("result").hidden = true;
  const body = new FormData();
  body.append("file", file);
  let response;
  try {
    response = await fetch("/predict?format=json&mask=true", { method: "POST", body });
  } catch (err) {
    status(`Network error: ${err}`, true);
    return;
  }
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    status(`Could not segment ${file.name}: ${data.error}`, true);
    return;
  }
  const original = $("original");
  original.src = URL.createObjectURL(file);
  await original.decode().catch(() => {});
  if (!original.naturalWidth) {
    // Formats the browser cannot show (e.g. 16-bit TIFF): show the mask on its own.
    original.removeAttribute("src");
    original.width = data.width;
    original.height = data.height;
  }
  const mask = $("mask");
  mask.src = `data:image/png;base64,${data.mask_png}`;
  await mask.decode();
  const rows = data.classes.map((c) =>
    `<tr><td><span class="swatch" style="background: rgb(${c.color.join(",")})"></span></td>` +
    `<td>${c.name}</td><td>${(100 * c.fraction).toFixed(1)}%</td></tr>`).join("");
  document.querySelector("#legend tbody").innerHTML = rows;
  $("result").hidden = false;
  status(`${file.name}: ${data.width}×${data.height} pixels`);
  document.body.dataset.state = "done";
}

$("opacity").addEventListener("input", (e) => { $("mask").style.opacity = e.target.value / 100; });
$("mask").style.opacity = $("opacity").value / 100;
$("file").addEventListener("change", (e) => { if (e.target.files[0]) predict(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]);
});
