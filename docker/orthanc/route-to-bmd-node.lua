-- Forward every stable CT series to bmd-node (the modality "bmdnode" of the Orthanc configuration).
function OnStableSeries(seriesId, tags, metadata)
  local instances = ParseJson(RestApiGet('/series/' .. seriesId .. '/instances'))
  if #instances == 0 then
    return
  end
  local modality = ParseJson(RestApiGet('/instances/' .. instances[1]['ID'] .. '/simplified-tags'))['Modality']
  if modality == 'CT' then
    print('bmd-node: forwarding CT series ' .. seriesId)
    RestApiPost('/modalities/bmdnode/store', seriesId)
  end
end
